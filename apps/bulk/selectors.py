"""Reads for bulk question jobs: a team's jobs, one job, and its result file (CSV or JSON Lines)."""

from __future__ import annotations

import csv
import io
import json

from django.db.models import QuerySet

from apps.bulk.models import BulkJob, BulkRow
from apps.core.errors import NotFound, ValidationFailed

RESULT_COLUMNS = (
    "id", "question", "gold", "status", "answer", "citations", "quality_label", "cost", "prompt_tokens",
    "completion_tokens", "tokens_saved", "batch_size", "fallback", "error",
)
RESULT_FORMATS = ("csv", "jsonl")


def bulk_jobs_for_team(*, team) -> QuerySet[BulkJob]:
    return BulkJob.objects.filter(team=team).select_related("pipeline", "job")


def bulk_job_get(*, team, bulk_job_id: int) -> BulkJob:
    """The team's bulk job (NotFound for another team's: never told apart from a missing one)."""
    bulk = bulk_jobs_for_team(team=team).filter(pk=bulk_job_id).first()
    if bulk is None:
        raise NotFound(f"bulk job {bulk_job_id} not found")
    return bulk


def _cited(row: BulkRow) -> list[dict]:
    return [
        {"n": c.get("n"), "document_id": c.get("document_id"), "document_title": c.get("document_title"),
         "chunk_id": c.get("chunk_id")}
        for c in row.citations or [] if c.get("cited")
    ]


def bulk_result_records(*, bulk: BulkJob) -> list[dict]:
    """One plain record per row, in the file's order: its answer, cited passages, quality label, cost and
    tokens (a pending row has no answer yet; a failed one its error)."""
    return [
        {
            "id": row.row_id, "question": row.question, "gold": row.gold, "status": row.status,
            "answer": row.answer, "citations": _cited(row), "quality_label": row.quality_label,
            "cost": str(row.cost), "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "tokens_saved": row.tokens_saved, "batch_size": row.batch_size, "fallback": row.fallback,
            "error": row.error,
        }
        for row in bulk.rows.order_by("position")
    ]


def bulk_result_file(*, bulk: BulkJob, file_format: str = "csv") -> tuple[str, str, str]:
    """(content, content type, file name) of the job's results as CSV (citations as JSON in one cell) or
    JSON Lines."""
    if file_format not in RESULT_FORMATS:
        raise ValidationFailed(f"unknown result format {file_format!r} (valid: {', '.join(RESULT_FORMATS)})")
    records = bulk_result_records(bulk=bulk)
    name = f"bulk-{bulk.pk}-results.{file_format}"
    if file_format == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "application/x-ndjson", name
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "citations": json.dumps(record["citations"], ensure_ascii=False)})
    return out.getvalue(), "text/csv", name
