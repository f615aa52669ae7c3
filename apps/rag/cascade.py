"""Cascade pipelines: tiers (other pipelines of the team) answer in turn until the scorer accepts.

A cascade is a Pipeline whose ``cascade`` is ``{"tiers": [pipeline ids, cheapest first], "scorer":
ScorerParams JSON}`` (``workers.rag.cascade``). Admission (``cascade_start_bound``) checks the
question against every tier's model and opens one hold for the whole cascade: the sum of every
tier's start bound, so it is admitted only when every tier could run. Execution
(``cascade_answer``): each tier runs as its own pipeline would, under the cascade run's hold and
``query_run_id`` (its ledger rows carry the tier's name as ``pipeline_name``), then the scorer reads
its quality signals and accepts or escalates. The run keeps every tier's score, threshold,
decision, reason and cost in ``QueryRun.cascade``, and the accepted tier's answer, quality and
baseline (savings are against the naive pipeline of the tier that answered; escalations make the
cost higher than that tier's alone, which the savings show).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max

from apps.core.errors import ValidationFailed
from apps.costs.models import ZERO, UsageRecord
from apps.rag.models import Pipeline, QueryRun
from apps.rag.question_runner import PROMPT_FRAMING_TOKENS, QueryHooks, query_start_bound

logger = logging.getLogger(__name__)

MAX_TIERS = 8


def _scorer(config: dict[str, Any]) -> Any:
    from workers.rag.cascade import ScorerParams

    raw = config.get("scorer") or {}
    return ScorerParams.from_dict(raw) if raw else None


def cascade_config_normalize(*, team, pipeline: Pipeline | None, config: Any) -> tuple[dict[str, Any], Any]:
    """Validate a cascade config and return ``({"tiers": [ids], "scorer": {...}}, the last tier's endpoint)``.

    Tiers are pipelines (names or ids) of the same team, 2 to MAX_TIERS, no repeats, not the cascade
    itself, none a cascade (no nesting, hence no cycles); a pipeline that is a tier cannot become a
    cascade. A scorer, when given, has one model per tier but the last.
    """
    if not isinstance(config, dict) or not isinstance(config.get("tiers"), list):
        raise ValidationFailed('a cascade is {"tiers": [pipeline names, cheapest first], "scorer": {...}}',
                               detail={"fields": {"cascade": "tiers must be a list"}})
    unknown = set(config) - {"tiers", "scorer"}
    if unknown:
        raise ValidationFailed(f"unknown cascade keys: {', '.join(sorted(unknown))} (valid: tiers, scorer)")
    refs = config["tiers"]
    if not 2 <= len(refs) <= MAX_TIERS:
        raise ValidationFailed(f"a cascade has 2 to {MAX_TIERS} tiers; got {len(refs)}",
                               detail={"fields": {"cascade": "2 or more tiers"}})
    tiers: list[Pipeline] = []
    for ref in refs:
        if isinstance(ref, Pipeline):
            tier = ref
        else:
            lookup = {"pk": ref} if isinstance(ref, int) and not isinstance(ref, bool) else {"name": str(ref)}
            tier = Pipeline.objects.filter(**lookup, team=team).first()
            if tier is None:
                raise ValidationFailed(f"cascade tier {ref!r}: the team has no such pipeline",
                                       detail={"fields": {"cascade": f"unknown tier {ref!r}"}})
        if tier.team_id != team.pk:
            raise ValidationFailed(f"cascade tier {tier.name!r} belongs to another team")
        if pipeline is not None and tier.pk == pipeline.pk:
            raise ValidationFailed("a cascade cannot be one of its own tiers")
        if tier.is_cascade:
            raise ValidationFailed(f"cascade tier {tier.name!r} is itself a cascade: cascades do not nest")
        if any(t.pk == tier.pk for t in tiers):
            raise ValidationFailed(f"cascade tier {tier.name!r} is listed twice")
        tiers.append(tier)
    if pipeline is not None and pipeline.pk:
        users = cascades_using(pipeline=pipeline)
        if users:
            raise ValidationFailed(f"{pipeline.name!r} is a tier of cascade {users[0].name!r}: a tier cannot be a "
                                   "cascade (remove it from that cascade first)")
    try:
        scorer = _scorer(config)
    except ValueError as exc:
        raise ValidationFailed(f"cascade scorer: {exc}", detail={"fields": {"cascade": str(exc)}}) from exc
    if scorer is not None and len(scorer.tiers) != len(tiers) - 1:
        raise ValidationFailed(f"the cascade scorer has {len(scorer.tiers)} tier models; {len(tiers)} tiers need "
                               f"{len(tiers) - 1} (the last tier always answers)")
    return {"tiers": [t.pk for t in tiers], "scorer": scorer.as_dict() if scorer else {}}, tiers[-1].model_endpoint


def cascades_using(*, pipeline: Pipeline) -> list[Pipeline]:
    """The team's cascades that list ``pipeline`` as a tier."""
    return [p for p in Pipeline.objects.filter(team_id=pipeline.team_id).exclude(cascade={})
            if pipeline.pk in (p.cascade or {}).get("tiers", [])]


def cascade_tiers(*, pipeline: Pipeline, degradation: dict[str, Any] | None = None) -> list[Pipeline]:
    """The cascade's tier pipelines in order, degraded as the run's degradation says (``max_tiers``:
    the first ones; ``extractive_only``: its extractive tiers, else its first tier made extractive;
    ``top_k_cap``: each tier's passages)."""
    from apps.rag.degradation import EXTRACTIVE, pipeline_degraded

    ids = list((pipeline.cascade or {}).get("tiers", []))
    found = {p.pk: p for p in Pipeline.objects.filter(pk__in=ids, team_id=pipeline.team_id).select_related(
        "model_endpoint")}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValidationFailed(f"cascade {pipeline.name!r}: tier pipeline(s) {missing} no longer exist; edit it")
    tiers = [found[i] for i in ids]
    if degradation:
        if degradation.get("extractive_only"):
            extractive = [t for t in tiers if t.prompting_strategy == EXTRACTIVE]
            tiers = extractive or tiers[:1]
        if degradation.get("max_tiers"):
            tiers = tiers[: int(degradation["max_tiers"])]
        tiers = [pipeline_degraded(pipeline=t, degradation=degradation) for t in tiers]
    return tiers


def cascade_start_bound(
    *, pipeline: Pipeline, question: str, messages: list[dict], max_output_tokens: int,
    degradation: dict[str, Any] | None = None,
) -> Decimal:
    """The cascade's hold at admission: every tier's question checked against its model's window,
    and the sum of every tier's start bound (``question_runner.query_start_bound``: what each would be
    admitted at alone). ``messages``: the conversation before the question (the question is added here)."""
    from apps.costs.tokens import prompt_check

    total = ZERO
    for tier in cascade_tiers(pipeline=pipeline, degradation=degradation):
        endpoint = tier.model_endpoint
        if not endpoint.enabled:
            raise ValidationFailed(f"cascade tier {tier.name!r}: model {endpoint.name!r} is disabled")
        cap = max(1, min(max_output_tokens, tier.max_output_tokens, endpoint.max_output_tokens))
        system = [{"role": "system", "content": tier.system_prompt}] if tier.system_prompt else []
        prompt_check(endpoint, [*system, *messages, {"role": "user", "content": question}],
                     max_output_tokens=cap, extra_tokens=PROMPT_FRAMING_TOKENS)
        total += query_start_bound(endpoint=endpoint, pipeline=tier, question=question, messages=messages,
                                   max_output_tokens=cap)
    return total


def _ledger_since(run_id: int, after_id: int) -> Decimal:
    rows = UsageRecord.objects.filter(query_run_id=run_id, pk__gt=after_id)
    return rows.total_cost()


def cascade_answer(*, run: QueryRun, hooks: Any, stream: Any, progress: Any, answer: Any) -> Any:
    """Run the cascade's tiers in turn (see the module docstring); returns the accepted tier's result,
    with ``hooks`` (the run's) now holding that tier's ledger records for the baseline. ``answer``:
    ``services._answer`` (one tier's run; passed in, as this module sits below services); each tier's
    hooks are ``QueryHooks`` over the tier, under the cascade run's hold."""
    from workers.rag.cascade import cascade_decide

    cascade = run.pipeline
    tiers = cascade_tiers(pipeline=cascade, degradation=run.degradation)
    params = _scorer(cascade.cascade or {})
    trace: list[dict[str, Any]] = []
    outcome, accepted_hooks = None, None
    for index, tier in enumerate(tiers):
        tier_run = copy.copy(run)  # Django copies the related-object cache: ``run`` keeps its pipeline
        tier_run.pipeline = tier
        tier_run.max_output_tokens = max(1, min(run.max_output_tokens or tier.max_output_tokens,
                                                tier.max_output_tokens))
        tier_hooks = QueryHooks(run=tier_run, context=replace(hooks.context, pipeline_name=tier.name),
                                on_model_load=hooks.on_model_load)

        def tier_progress(done: int, total: int, message: str, _i: int = index, _name: str = tier.name) -> None:
            progress(done, total, f"tier {_i + 1}/{len(tiers)} ({_name}): {message}")

        before = UsageRecord.objects.filter(query_run_id=run.pk).aggregate(last=Max("pk"))["last"] or 0
        stream.text = ""
        outcome = answer(tier_run, tier_hooks, stream, tier_progress)
        quality = dict(outcome.quality or {})
        signals = {**quality, "quality_label": quality.get("label", ""), "quality": quality,
                   "finish_reason": outcome.finish_reason, "answer": outcome.answer}
        decision = cascade_decide(params=params, tier=index, tiers=len(tiers), result=signals)
        trace.append({
            "tier": index, "pipeline": tier.name, "pipeline_id": tier.pk, "model": tier.model_endpoint.name,
            **decision.as_dict(), "fitted": params is not None and index < len(params.tiers),
            "cost": str(_ledger_since(run.pk, before)), "quality_label": quality.get("label", ""),
            "finish_reason": outcome.finish_reason, "answer": outcome.answer[:500],
        })
        accepted_hooks = tier_hooks
        if decision.accept:
            break
    assert outcome is not None and accepted_hooks is not None
    answered = trace[-1]
    # The run's baseline and ledger records are the answering tier's.
    hooks.endpoint = accepted_hooks.endpoint
    hooks.retrieval_record = accepted_hooks.retrieval_record
    hooks.generation_record = accepted_hooks.generation_record
    hooks.quality_record = accepted_hooks.quality_record
    hooks.grounding_record = accepted_hooks.grounding_record
    QueryRun.objects.filter(pk=run.pk).update(
        endpoint=accepted_hooks.endpoint,
        cascade={"answered_by": answered["pipeline"], "tier": answered["tier"], "tiers_run": len(trace),
                 "tiers_total": len(tiers), "reason": answered["reason"], "tiers": trace},
    )
    return outcome


def cascade_scorer_params(
    *, pipeline: Pipeline, rows: list[dict[str, Any]], accuracy_floor: float | None = None,
    cost_target: float | None = None,
) -> Any:
    """Fit the cascade's scorer from labelled rows (``cascade_scorer_save``'s rows) without storing it:
    a ``workers.rag.cascade.ScorerParams``. ValidationFailed when the pipeline is no cascade or the
    rows cannot be fit."""
    from workers.rag.cascade import cascade_scorer_fit

    if not pipeline.is_cascade:
        raise ValidationFailed(f"{pipeline.name!r} is not a cascade")
    tiers = cascade_tiers(pipeline=pipeline)
    try:
        return cascade_scorer_fit(rows, tier_names=[t.name for t in tiers], tiers=len(tiers),
                                  accuracy_floor=accuracy_floor, cost_target=cost_target)
    except (KeyError, ValueError) as exc:
        raise ValidationFailed(f"cannot fit the cascade scorer: {exc}") from exc


def cascade_scorer_store(*, pipeline: Pipeline, scorer: dict[str, Any], tiers: list[int]) -> Pipeline:
    """Store a fitted scorer (``ScorerParams.as_dict()``) on the cascade, provided its tiers are still
    ``tiers`` (the ids it was fit for): the row is locked, so a concurrent edit of the tiers either
    lands first (and this refuses) or after (and sees this scorer)."""
    from workers.rag.cascade import ScorerParams

    with transaction.atomic():
        locked = Pipeline.objects.select_for_update().get(pk=pipeline.pk)
        current = list((locked.cascade or {}).get("tiers", []))
        if current != list(tiers):
            raise ValidationFailed(f"the tiers of cascade {locked.name!r} changed while the scorer was fit: "
                                   "fit it again", code="conflict")
        try:
            params = ScorerParams.from_dict(scorer)
        except ValueError as exc:
            raise ValidationFailed(f"cascade scorer: {exc}") from exc
        if len(params.tiers) != len(current) - 1:
            raise ValidationFailed(f"the cascade scorer has {len(params.tiers)} tier models; {len(current)} tiers "
                                   f"need {len(current) - 1}")
        locked.cascade = {**locked.cascade, "scorer": params.as_dict()}
        locked.save(update_fields=["cascade", "updated_at"])
    pipeline.cascade = locked.cascade
    pipeline.updated_at = locked.updated_at
    return pipeline


def cascade_scorer_save(
    *, pipeline: Pipeline, rows: list[dict[str, Any]], accuracy_floor: float | None = None,
    cost_target: float | None = None,
) -> Pipeline:
    """Fit the cascade's scorer from labelled rows and store it (JSON) on the pipeline.

    ``rows``: one per (question, tier) answer: ``tier`` (the tier pipeline's name, or its 0-based
    index), ``correct`` (bool), the run's quality fields (``quality_label``, ``support``,
    ``support_score``, ``retrieval_confidence``, ``citations_removed``, ``finish_reason``,
    ``answer``, optional ``quality`` dict), and for thresholds ``question`` (an id) and ``cost``.
    See ``workers.rag.cascade.cascade_scorer_fit``; an evaluation job's rows:
    ``apps.evaluations.cascade_fit.cascade_scorer_fit_from_evaluation``.
    """
    params = cascade_scorer_params(pipeline=pipeline, rows=rows, accuracy_floor=accuracy_floor,
                                   cost_target=cost_target)
    return cascade_scorer_store(pipeline=pipeline, scorer=params.as_dict(), tiers=list(pipeline.cascade["tiers"]))


def query_run_rows_for_scorer(*, runs: list[QueryRun], correct: dict[int, bool]) -> list[dict[str, Any]]:
    """Labelled scorer rows from finished runs of tier pipelines: ``correct`` maps a run id to whether
    its answer was right; the question text is the question id."""
    return [
        {"question": r.question, "tier": r.pipeline.name if r.pipeline_id else "", "correct": bool(correct[r.pk]),
         "cost": str(r.cost), "quality_label": r.quality_label, "support": r.support,
         "support_score": r.support_score, "retrieval_confidence": r.retrieval_confidence,
         "citations_removed": r.citations_removed, "finish_reason": r.finish_reason, "answer": r.answer,
         "quality": r.quality}
        for r in runs if r.pk in correct
    ]
