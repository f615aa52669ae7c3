"""The query tasks on the `gpu` queue: one RAG question (or one metered chat call), and its shadow baseline."""

from __future__ import annotations

from apps.core.models import Job
from apps.rag.services import query_run_execute
from apps.rag.shadow_run import shadow_baseline_execute
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="rag.query", queue=Queue.GPU, soft_time_limit=600, time_limit=660)
def run_query(job: Job, progress: Progress) -> dict:
    """Answer the QueryRun named in the job's params."""
    run = query_run_execute(query_run_id=job.params["query_run_id"], progress=progress)
    if run is None:
        return {"skipped": "query run deleted"}
    return {"query_run_id": run.pk, "status": run.status, "cost": str(run.cost)}


@job_task(kind="rag.shadow_baseline", queue=Queue.GPU, soft_time_limit=600, time_limit=660)
def run_shadow_baseline(job: Job, progress: Progress) -> dict:
    """Run the naive pipeline for the QueryRun named in the job's params (billed to the operator team)."""
    measured = shadow_baseline_execute(query_run_id=job.params["query_run_id"], progress=progress)
    if measured is None:
        return {"skipped": "no shadow for this run (gone, unfinished, or refused by the operator's budget)"}
    return {"query_run_id": job.params["query_run_id"], "measured_baseline_cost": str(measured)}


@job_task(kind="embeddings.create", queue=Queue.GPU, soft_time_limit=300, time_limit=330)
def create_embeddings(job: Job, progress: Progress) -> dict:
    """Embed the texts in the job's params (OpenAI-compatible /v1/embeddings)."""
    from apps.rag.embeddings import embeddings_compute

    return embeddings_compute(job=job)
