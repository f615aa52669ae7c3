"""The bulk question task: a file of questions against a pipeline, progress on its Job row.

A provider-batch job (``mode="provider_batch"``, apps/bulk/provider_batch.py) runs in stages: while the
provider works the job goes back to its queue and polls again PARSIMONY_PROVIDER_BATCH_POLL_S later. After
such a job is cancelled (or fails for good) while its batch runs, ``bulk.provider_batch_after_end`` polls the
batch the same way and settles what the provider answered anyway.
"""

from __future__ import annotations

from apps.bulk.models import BulkJob, BulkMode
from apps.bulk.provider_batch import (
    AFTER_END_TASK,
    ProviderWait,
    provider_batch_after_end,
    provider_batch_run,
)
from apps.bulk.services import bulk_job_execute
from apps.core.dispatch import task_send
from apps.core.jobs import JobContinue
from apps.core.models import Job
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="bulk.run", queue=Queue.GPU, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def run_bulk(job: Job, progress: Progress) -> dict | JobContinue:
    """Answer the pending rows of the BulkJob named in the job's params (finished rows are skipped)."""
    bulk_job_id = job.params["bulk_job_id"]
    if BulkJob.objects.filter(pk=bulk_job_id, mode=BulkMode.PROVIDER_BATCH).exists():
        outcome = provider_batch_run(bulk_job_id=bulk_job_id, progress=progress)
        if isinstance(outcome, ProviderWait):
            return JobContinue(queue=job.queue, params=job.params, message=outcome.message,
                               countdown=outcome.countdown)
        bulk = outcome
    else:
        bulk = bulk_job_execute(bulk_job_id=bulk_job_id, progress=progress)
    if bulk is None:
        return {"skipped": "bulk job deleted"}
    return {"bulk_job_id": bulk.pk, "rows_done": bulk.rows_done, "rows_failed": bulk.rows_failed,
            "cost": str(bulk.cost), "savings": str(bulk.savings)}


@app.task(name=AFTER_END_TASK, ignore_result=True, soft_time_limit=1800, time_limit=1860)
def provider_batch_after_end_task(bulk_job_id: int, queue: str = Queue.GPU.value) -> dict | None:
    """Settle what an ended job's provider batch answered before its cancel took effect; while the batch
    still runs, poll again later (this task sent again, on the same queue)."""
    outcome = provider_batch_after_end(bulk_job_id=bulk_job_id)
    if isinstance(outcome, ProviderWait):
        task_send(task_name=AFTER_END_TASK, args=(bulk_job_id, queue), queue=queue, countdown=outcome.countdown)
        return None
    if outcome is None:
        return {"skipped": "bulk job deleted"}
    return {"bulk_job_id": outcome.pk, "rows_done": outcome.rows_done, "cost": str(outcome.cost)}
