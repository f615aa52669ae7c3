"""Shadow baselines, the start: a sampled share of pipeline queries also runs the naive pipeline for real.

A query's savings are claimed against a baseline that is partly an estimate (device time from the
cost model, ``apps.costs.baseline``). With ``PARSIMONY_SHADOW_BASELINE`` = p > 0, a share p of
pipeline queries is followed by a shadow job (``rag.shadow_baseline``, same queue, after the
answer is stored so the team never waits) that answers the same question with the naive pipeline
and stores what it cost on the run as ``measured_baseline_cost``. The operator team pays
(``PARSIMONY_OPERATOR_TEAM``, created on demand, with its own budgets); the run itself is in
``apps.rag.shadow_run``. ``apps.rag.selectors.savings_accuracy`` compares claimed and measured.
"""

from __future__ import annotations

import random

from django.conf import settings
from django.db import IntegrityError

from apps.accounts.models import Team
from apps.core.models import Job
from apps.core.services import job_start
from apps.rag.models import QueryRun

SHADOW_JOB_KIND = "rag.shadow_baseline"
SHADOW_PIPELINE_PREFIX = "shadow:"


def operator_team() -> Team:
    """The team that pays for shadow baselines (``PARSIMONY_OPERATOR_TEAM``, a slug), created on demand."""
    slug = settings.PARSIMONY_OPERATOR_TEAM
    try:
        team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": slug})
    except IntegrityError:  # created by a concurrent shadow in between
        team = Team.objects.get(slug=slug)
    return team


def shadow_wanted(*, run: QueryRun, fraction: float | None = None) -> bool:
    """Whether ``run`` gets a shadow: a retrieval pipeline's run, sampled at ``PARSIMONY_SHADOW_BASELINE``.

    Direct calls are their own baseline; fixed-context pipelines have no naive retrieval pipeline to
    compare with (their baseline stays the cost model's estimate of the uncached prompt)."""
    fraction = settings.PARSIMONY_SHADOW_BASELINE if fraction is None else fraction
    if fraction <= 0 or run.pipeline_id is None or run.pipeline.has_fixed_context:
        return False
    return fraction >= 1 or random.random() < fraction  # noqa: S311 (sampling, not security)


def shadow_baseline_maybe_start(*, run: QueryRun, fraction: float | None = None) -> Job | None:
    """Enqueue the shadow baseline of a finished run when it is sampled; None when it is not."""
    if not shadow_wanted(run=run, fraction=fraction):
        return None
    return job_start(kind=SHADOW_JOB_KIND, team=operator_team(), params={"query_run_id": run.pk}, total=3)


__all__ = [
    "SHADOW_JOB_KIND",
    "SHADOW_PIPELINE_PREFIX",
    "operator_team",
    "shadow_baseline_maybe_start",
    "shadow_wanted",
]
