"""The bulk question task: a file of questions against a pipeline, progress on its Job row."""

from __future__ import annotations

from apps.bulk.services import bulk_job_execute
from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="bulk.run", queue=Queue.GPU, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 60)
def run_bulk(job: Job, progress: Progress) -> dict:
    """Answer the pending rows of the BulkJob named in the job's params (finished rows are skipped)."""
    bulk = bulk_job_execute(bulk_job_id=job.params["bulk_job_id"], progress=progress)
    if bulk is None:
        return {"skipped": "bulk job deleted"}
    return {"bulk_job_id": bulk.pk, "rows_done": bulk.rows_done, "rows_failed": bulk.rows_failed,
            "cost": str(bulk.cost), "savings": str(bulk.savings)}
