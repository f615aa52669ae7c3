"""Shadow baselines, the run (in a worker): the naive pipeline answers a finished run's question for real.

Same model endpoint, same question, same retrieval (retriever, top_k, corpora), no compression,
naive prompting, no fixed-context tricks, the same max output tokens. Billed to the operator team
under a hold on the ``shadow_baseline`` cost path; its rows carry ``pipeline_name`` "shadow:<name>"
and ``shadow_of_query_run_id`` (never ``query_run_id``: the run's own cost stays the sum of its own
rows). The run stores the rows' sum as ``measured_baseline_cost``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from decimal import Decimal

from django.conf import settings

from apps.costs.pricing import money
from apps.costs.services import BudgetExceeded, LedgerContext
from apps.costs.services.holds import spending
from apps.rag.models import QueryRun, QueryStatus
from apps.rag.question_runner import QueryHooks, engine_config, query_start_bound
from apps.rag.shadow import SHADOW_PIPELINE_PREFIX, operator_team

logger = logging.getLogger(__name__)


def _naive(pipeline):
    """The pipeline as the naive baseline runs it (an unsaved copy: never written back)."""
    naive = copy.copy(pipeline)
    naive.compression_method, naive.compression_target = "none", 1.0
    naive.prompting_strategy, naive.prompting_options = "naive", {}
    naive.fixed_context, naive.fixed_context_corpus_id = "", None
    naive.attention_backend, naive.attention_options = "full", {}
    return naive


def shadow_baseline_execute(*, query_run_id: int, progress=None) -> Decimal | None:
    """Run the naive pipeline for a finished run and store its cost on the run; returns that cost.

    Idempotent: a run that already has its measured baseline is left alone. None when the run is
    gone, unfinished, not a pipeline's, or the operator team's budget refuses the shadow."""
    from workers.rag.pipeline import PipelineError, run_pipeline

    progress = progress or (lambda *args, **kwargs: None)
    run = (
        QueryRun.objects.select_related("pipeline", "pipeline__model_endpoint", "team")
        .filter(pk=query_run_id)
        .first()
    )
    if run is None or run.pipeline_id is None or run.status != QueryStatus.SUCCEEDED:
        return None
    if run.measured_baseline_cost is not None:
        return run.measured_baseline_cost
    endpoint = run.pipeline.model_endpoint
    naive = _naive(run.pipeline)
    history = list(run.messages[:-1])  # a follow-up's naive baseline reads the same conversation history
    context = LedgerContext(
        team=operator_team(),
        pipeline_name=f"{SHADOW_PIPELINE_PREFIX}{run.pipeline.name}"[:120],
        shadow_of_query_run_id=run.pk,
    )
    estimate = query_start_bound(
        endpoint=endpoint,
        pipeline=naive,
        question=run.question,
        messages=history,
        max_output_tokens=run.max_output_tokens or run.pipeline.max_output_tokens,
    )
    try:
        with spending(
            path="shadow_baseline",
            context=context,
            estimate=estimate,
            description=f"shadow baseline of query #{run.pk}",
            ttl_s=int(settings.PARSIMONY_MODEL_WALL_TIME_S * 3 + 300),
        ) as hold:
            run.pipeline = naive
            hooks = QueryHooks(run=run, context=context, reservation=hold.reservation)
            config = dataclasses.replace(engine_config(run=run, endpoint=endpoint), fixed_context=False)
            try:
                run_pipeline(question=run.question, config=config, hooks=hooks, progress=progress, history=history)
            except PipelineError as exc:
                logger.warning("shadow baseline of query #%s failed: %s", run.pk, exc)
                raise
            measured = money(hold.spent())
    except BudgetExceeded as exc:
        logger.info("shadow baseline of query #%s refused by the operator's budget: %s", run.pk, exc)
        return None
    QueryRun.objects.filter(pk=run.pk, measured_baseline_cost__isnull=True).update(
        measured_baseline_cost=measured
    )
    return measured


__all__ = ["shadow_baseline_execute"]
