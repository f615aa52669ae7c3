"""Reads for evaluation sets and runs: lists, per-pipeline summaries (accuracy, cost, cost-of-pass, p50
latency, the frontier), the chart's geometry, exports, and the labelled rows a cascade scorer is fit on."""

from __future__ import annotations

import csv
import io
import json
import statistics
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from apps.core.scoping import team_object_or_404, team_scoped
from apps.costs.models import ZERO
from apps.evaluations.frontier import frontier
from apps.evaluations.models import EvalRow, EvalRun, EvalSet
from apps.evaluations.parsing import SHIPPED_SETS
from apps.evaluations.services import CORRECT_AT


def eval_set_list(*, team) -> QuerySet[EvalSet]:
    return team_scoped(EvalSet, team)


def eval_set_get(*, team, eval_set_id: int) -> EvalSet:
    return team_object_or_404(eval_set_list(team=team), team, pk=eval_set_id)


def eval_shipped_list() -> list[dict[str, str]]:
    return [{"name": name, "description": description} for name, (_, description) in sorted(SHIPPED_SETS.items())]


def eval_run_list(*, team) -> QuerySet[EvalRun]:
    return team_scoped(EvalRun, team).select_related("eval_set", "job", "created_by")


def eval_run_get(*, team, eval_run_id: int) -> EvalRun:
    return team_object_or_404(eval_run_list(team=team), team, pk=eval_run_id)


def eval_run_rows(*, eval_run: EvalRun) -> QuerySet[EvalRow]:
    return EvalRow.objects.filter(run=eval_run).order_by("pipeline_name", "position")


def _row_correct(row: EvalRow) -> bool:
    return row.contained is not None and row.contained >= CORRECT_AT


def eval_run_labelled_rows(*, eval_run: EvalRun, pipeline_name: str) -> list[dict[str, Any]]:
    """The finished rows of one pipeline of a run, each as the labelled example a cascade scorer is fit
    on: the question, gold answers, answer, scores, cost, latency, the quality label and the run's quality
    signals (``QueryRun.quality``), the run's ``finish_reason`` ("" when its run is gone), and ``correct`` (a
    gold answer contained in the answer)."""
    return [
        {
            "pipeline": row.pipeline_name,
            "item_id": row.item_id,
            "question": row.question,
            "gold": list(row.gold),
            "answer": row.answer,
            "status": row.status,
            "contained": row.contained,
            "f1": row.f1,
            "exact_match": row.exact_match,
            "cost": row.cost,
            "latency_ms": row.latency_ms,
            "quality_label": row.quality_label,
            "quality": dict(row.quality or {}),
            "finish_reason": row.query_run.finish_reason if row.query_run_id else "",
            "correct": _row_correct(row),
        }
        for row in eval_run_rows(eval_run=eval_run).filter(
            pipeline_name=pipeline_name, finished_at__isnull=False).select_related("query_run")
    ]


def eval_run_pipeline_names(*, eval_run: EvalRun) -> dict[int, str]:
    """The pipelines a run has rows of: pipeline id -> the name its rows carry (pipelines deleted since
    are left out)."""
    rows = EvalRow.objects.filter(run=eval_run, pipeline__isnull=False).values_list("pipeline_id", "pipeline_name")
    return dict(rows.distinct())


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def eval_run_summary(*, eval_run: EvalRun) -> list[dict[str, Any]]:
    """Per pipeline, in the order asked: questions run, accuracy (contained, F1, exact match, as means
    over the finished rows, a failed answer scoring 0), total cost, cost per question, cost-of-pass
    (total cost ÷ right answers; None when none is right), p50 latency, and whether it is on the
    accuracy/cost frontier (by contained and cost per question)."""
    rows_by_pipeline: dict[str, list[EvalRow]] = {name: [] for name in eval_run.pipeline_names}
    for row in eval_run_rows(eval_run=eval_run):
        rows_by_pipeline.setdefault(row.pipeline_name, []).append(row)
    summary = []
    for name, rows in rows_by_pipeline.items():
        finished = [r for r in rows if r.finished_at is not None]
        cost = sum((r.cost for r in finished), ZERO)
        correct = sum(1 for r in finished if _row_correct(r))
        latencies = [r.latency_ms for r in finished if r.status == "succeeded"]
        summary.append({
            "pipeline": name,
            "questions": len(finished),
            "failed": sum(1 for r in finished if r.status != "succeeded"),
            "correct": correct,
            "contained": _mean([r.contained or 0.0 for r in finished]),
            "f1": _mean([r.f1 or 0.0 for r in finished]),
            "exact_match": _mean([r.exact_match or 0.0 for r in finished]),
            "cost": cost,
            "cost_per_question": (cost / len(finished)) if finished else None,
            "cost_of_pass": (cost / correct) if correct else None,
            "p50_latency_ms": int(statistics.median(latencies)) if latencies else None,
        })
    points = [(s["pipeline"], s["cost_per_question"], s["contained"]) for s in summary if s["questions"]]
    on = frontier(points)
    for s in summary:
        s["frontier"] = s["pipeline"] in on
    return summary


# The chart: accuracy (contained) against cost per question, drawn as inline SVG by the result page.
CHART_W, CHART_H, CHART_PAD = 560, 320, 56


def eval_chart(*, summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's geometry in SVG units: one point per pipeline with questions, x = cost per question
    (linear from $0 to the most expensive), y = contained (0 to 100%), the frontier as a polyline."""
    points = [s for s in summary if s["questions"] and s["cost_per_question"] is not None]
    top = max((s["cost_per_question"] for s in points), default=ZERO) or Decimal(1)
    width, height = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD

    def x(cost: Decimal) -> float:
        return round(CHART_PAD + float(cost / top) * width, 1)

    def y(accuracy: float) -> float:
        return round(CHART_PAD + (1.0 - accuracy) * height, 1)

    drawn = [
        {"pipeline": s["pipeline"], "x": x(s["cost_per_question"]), "y": y(s["contained"] or 0.0),
         "frontier": s["frontier"], "cost": s["cost_per_question"], "contained": s["contained"] or 0.0}
        for s in points
    ]
    line = sorted((p for p in drawn if p["frontier"]), key=lambda p: (p["x"], -p["y"]))
    return {
        "width": CHART_W, "height": CHART_H, "pad": CHART_PAD,
        "x0": CHART_PAD, "x1": CHART_W - CHART_PAD, "y0": CHART_H - CHART_PAD, "y1": CHART_PAD,
        "max_cost": top, "points": drawn,
        "frontier_line": " ".join(f"{p['x']},{p['y']}" for p in line),
        "y_ticks": [{"y": y(v / 4), "label": f"{int(v * 25)}%"} for v in range(5)],
    }


EXPORT_FIELDS = ("pipeline", "item_id", "question", "gold", "answer", "status", "contained", "f1", "exact_match",
                 "cost", "latency_ms", "quality_label", "error")


def eval_run_export(*, eval_run: EvalRun) -> list[dict[str, Any]]:
    """Every row of the run, for the CSV / JSON download (money as exact decimal strings)."""
    return [
        {
            "pipeline": row.pipeline_name, "item_id": row.item_id, "question": row.question, "gold": list(row.gold),
            "answer": row.answer, "status": row.status, "contained": row.contained, "f1": row.f1,
            "exact_match": row.exact_match, "cost": str(row.cost), "latency_ms": row.latency_ms,
            "quality_label": row.quality_label, "error": row.error,
        }
        for row in eval_run_rows(eval_run=eval_run)
    ]


def eval_run_export_csv(*, eval_run: EvalRun) -> str:
    """The rows as CSV text (gold answers joined by " | ")."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for row in eval_run_export(eval_run=eval_run):
        writer.writerow({**row, "gold": " | ".join(row["gold"])})
    return out.getvalue()


DOWNLOAD_KINDS = ("json", "csv")


def eval_run_download(*, eval_run: EvalRun, kind: str) -> tuple[str, str, str]:
    """(content, content type, file name) of the run's rows as ``kind`` (json or csv; else ValidationFailed)."""
    from apps.core.errors import ValidationFailed

    if kind not in DOWNLOAD_KINDS:
        raise ValidationFailed(f"unknown download {kind!r} (valid: {', '.join(DOWNLOAD_KINDS)})")
    name = f"evaluation-{eval_run.pk}.{kind}"
    if kind == "csv":
        return eval_run_export_csv(eval_run=eval_run), "text/csv; charset=utf-8", name
    body = {"evaluation": eval_run.pk, "eval_set": eval_run.eval_set.name, "status": eval_run.status,
            "rows": eval_run_export(eval_run=eval_run)}
    return json.dumps(body, indent=1), "application/json", name


def eval_run_cascades(*, eval_run: EvalRun) -> list[dict[str, Any]]:
    """The team's cascades whose every tier ran in this job (a scorer can be fit for them from it), by name:
    ``{"pipeline", "tiers": [names], "fitted_here": the scorer's provenance when it was fit from this job}``."""
    from apps.rag.models import Pipeline

    ran = eval_run_pipeline_names(eval_run=eval_run)
    names = dict(Pipeline.objects.filter(team_id=eval_run.team_id).values_list("pk", "name"))
    found = []
    for cascade in Pipeline.objects.filter(team_id=eval_run.team_id).exclude(cascade={}).order_by("name"):
        tiers = list((cascade.cascade or {}).get("tiers", []))
        if len(tiers) < 2 or any(t not in ran for t in tiers):
            continue
        provenance = ((cascade.cascade.get("scorer") or {}).get("objective") or {}).get("provenance") or {}
        found.append({"pipeline": cascade, "tiers": [names.get(t, str(t)) for t in tiers],
                      "fitted_here": provenance if provenance.get("evaluation") == eval_run.pk else None})
    return found
