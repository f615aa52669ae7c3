"""Fit a cascade's scorer from an evaluation job in which every tier of the cascade ran (issue 27).

The job's labelled rows (``selectors.eval_run_labelled_rows``: each tier's answer to each question, its
quality signals, cost and whether it contained a gold answer) are the scorer's training rows: one logistic
regression per tier but the last, thresholds chosen on the same rows under an accuracy floor or a mean-cost
target (``workers.rag.cascade``). The scorer is stored on the cascade with its provenance: the job, the rows,
the objective, the thresholds, and what the cascade and each tier alone would have scored and cost on those
rows. Fitting is a few logistic regressions on tens to hundreds of rows: it runs in the request.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.costs.models import ZERO
from apps.evaluations.models import EvalRun
from apps.evaluations.selectors import eval_run_labelled_rows, eval_run_pipeline_names
from apps.rag.cascade import cascade_scorer_params, cascade_scorer_store, cascade_tiers
from apps.rag.models import Pipeline

OBJECTIVES = {
    "accuracy_floor": "the cheapest thresholds whose accuracy (contained) reaches this share, 0 to 1",
    "cost_target": "the most accurate thresholds whose mean cost per question is within this many dollars",
}
MIN_QUESTIONS = 10  # questions every tier answered: fewer cannot fit a regression per tier
MONEY = Decimal("0.0000000001")


def _objective(objective: str, value: Any) -> tuple[float | None, Decimal | None]:
    """(accuracy floor, cost target) of the objective; ValidationFailed naming the field."""
    if objective not in OBJECTIVES:
        raise ValidationFailed(f"unknown objective {objective!r} (valid: {', '.join(OBJECTIVES)})",
                               detail={"fields": {"objective": "accuracy_floor or cost_target"}})
    if value is None or value == "":
        if objective == "accuracy_floor":
            return None, None  # the last tier's accuracy on the rows
        raise ValidationFailed("a cost target needs a value: dollars per question, e.g. 0.0001",
                               detail={"fields": {"value": "required for cost_target"}})
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or isinstance(value, bool):
        raise ValidationFailed(f"the objective's value must be a number; got {value!r}",
                               detail={"fields": {"value": "not a number"}})
    if objective == "accuracy_floor":
        if not 0 < number <= 1:
            raise ValidationFailed(f"an accuracy floor is a share above 0 and at most 1 (e.g. 0.8); got {number}",
                                   detail={"fields": {"value": "0 < floor ≤ 1"}})
        return float(number), None
    if number <= 0:
        raise ValidationFailed(f"a cost target is dollars per question above 0 (e.g. 0.0001); got {number}",
                               detail={"fields": {"value": "above 0"}})
    return None, number


def _scorer_row(row: dict[str, Any], tier: int) -> dict[str, Any]:
    """An evaluation row as a scorer row: the quality signals at the top, as a cascade run reads them."""
    quality = dict(row["quality"] or {})
    return {**quality, "question": row["item_id"], "tier": tier, "correct": bool(row["correct"]),
            "cost": row["cost"], "quality_label": row["quality_label"] or quality.get("label", ""),
            "quality": quality, "finish_reason": row["finish_reason"], "answer": row["answer"]}


def cascade_scorer_fit_from_evaluation(
    *, pipeline: Pipeline, evaluation: EvalRun, objective: str, value: Any = None, user: Any = None,
) -> dict[str, Any]:
    """Fit ``pipeline``'s (a cascade's) scorer on the finished rows of ``evaluation`` and store it with its
    provenance; returns that summary (also kept as ``cascade.scorer.objective.provenance``).

    ``objective``: ``accuracy_floor`` (``value`` a share in (0, 1]; none: the last tier's accuracy on the
    rows) or ``cost_target`` (``value`` dollars per question). Only questions that every tier answered
    (status succeeded) count. Refused (ValidationFailed, nothing stored): not a cascade, another team's
    job, a job still running, a tier the job did not run (named), fewer than ``MIN_QUESTIONS`` such
    questions, or a tier but the last whose answers were all right or all wrong (nothing to learn).
    """
    from workers.rag.cascade import cascade_features, cascade_simulate

    floor, target = _objective(objective, value)
    if not pipeline.is_cascade:
        raise ValidationFailed(f"{pipeline.name!r} is not a cascade", detail={"fields": {"pipeline": "not a cascade"}})
    if evaluation.team_id != pipeline.team_id:
        raise ValidationFailed(f"unknown evaluation {evaluation.pk}", code="unknown_evaluation",
                               detail={"fields": {"evaluation": "not found"}})
    if not evaluation.is_finished:
        raise ValidationFailed(f"evaluation #{evaluation.pk} is still {evaluation.status}: fit once it has finished",
                               detail={"fields": {"evaluation": "not finished"}})
    tiers = cascade_tiers(pipeline=pipeline)
    ran = eval_run_pipeline_names(eval_run=evaluation)
    missing = [t.name for t in tiers if t.pk not in ran]
    if missing:
        raise ValidationFailed(
            f"evaluation #{evaluation.pk} did not run tier(s) {', '.join(repr(m) for m in missing)} of cascade "
            f"{pipeline.name!r}: run an evaluation with every tier ({', '.join(t.name for t in tiers)})",
            code="tiers_missing", detail={"fields": {"evaluation": "tiers missing"}, "missing": missing})
    by_tier = [{r["item_id"]: r for r in eval_run_labelled_rows(eval_run=evaluation, pipeline_name=ran[t.pk])
                if r["status"] == "succeeded"} for t in tiers]
    asked = set().union(*(set(rows) for rows in by_tier))
    questions = sorted(set.intersection(*(set(rows) for rows in by_tier)))
    if len(questions) < MIN_QUESTIONS:
        raise ValidationFailed(
            f"evaluation #{evaluation.pk} has {len(questions)} question(s) answered by every tier of "
            f"{pipeline.name!r}; fitting needs at least {MIN_QUESTIONS}", code="too_few_rows",
            detail={"fields": {"evaluation": "too few labelled rows"}})
    for index, tier in enumerate(tiers[:-1]):
        right = sum(by_tier[index][q]["correct"] for q in questions)
        if right in (0, len(questions)):
            how = "right" if right else "wrong"
            raise ValidationFailed(
                f"tier {tier.name!r} answered all {len(questions)} questions {how} in evaluation #{evaluation.pk}: "
                "the scorer learns when to accept a tier from right and wrong answers; use a set where it is both",
                code="one_class", detail={"fields": {"evaluation": "only one class"}})
    rows = [_scorer_row(by_tier[t][q], t) for q in questions for t in range(len(tiers))]
    correct = [[bool(by_tier[t][q]["correct"]) for t in range(len(tiers))] for q in questions]
    costs = [[Decimal(by_tier[t][q]["cost"]) for t in range(len(tiers))] for q in questions]
    if objective == "accuracy_floor" and floor is None:
        floor = sum(c[-1] for c in correct) / len(correct)
    params = cascade_scorer_params(pipeline=pipeline, rows=rows, accuracy_floor=floor,
                                   cost_target=float(target) if target is not None else None)
    thresholds = [m.threshold for m in params.tiers]
    scores = [[params.tiers[t].score(cascade_features(rows[i * len(tiers) + t])) if t < len(tiers) - 1 else 1.0
               for t in range(len(tiers))] for i in range(len(questions))]
    forced = [[str(rows[i * len(tiers) + t]["quality_label"]) in ("degenerate", "abstained")
               for t in range(len(tiers))] for i in range(len(questions))]
    answered = cascade_simulate(scores=scores, correct=correct, costs=[[float(c) for c in q] for q in costs],
                                thresholds=[*thresholds, 0.0], forced=forced)["answered_by"]
    n = Decimal(len(questions))
    spent = sum((sum(costs[i][: answered[i] + 1], ZERO) for i in range(len(questions))), ZERO)
    summary = {
        "pipeline": pipeline.pk, "pipeline_name": pipeline.name,
        "evaluation": evaluation.pk, "eval_set": evaluation.eval_set.name,
        "fitted_at": timezone.now().isoformat(), "fitted_by": getattr(user, "username", "") or "",
        "objective": objective,
        "value": str(target) if target is not None else floor,
        "met": bool(params.objective.get("met")),
        "questions": len(questions), "rows": len(rows), "skipped_questions": len(asked) - len(questions),
        "cascade": {
            "accuracy": sum(correct[i][answered[i]] for i in range(len(questions))) / len(questions),
            "cost_per_question": str((spent / n).quantize(MONEY)),
        },
        "tiers": [
            {"pipeline": tier.name, "pipeline_id": tier.pk,
             "threshold": thresholds[t] if t < len(thresholds) else None,
             "accuracy": sum(c[t] for c in correct) / len(correct),
             "cost_per_question": str((sum((c[t] for c in costs), ZERO) / n).quantize(MONEY)),
             "answered": sum(1 for a in answered if a == t)}
            for t, tier in enumerate(tiers)
        ],
    }
    params.objective = {**params.objective, "provenance": summary}
    cascade_scorer_store(pipeline=pipeline, scorer=params.as_dict(), tiers=[t.pk for t in tiers])
    return summary
