"""The evaluation task on the `gpu` queue: a labelled set through several pipelines, one row at a time."""

from __future__ import annotations

from apps.core.models import Job
from apps.evaluations.services import eval_run_execute
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="evaluations.run", queue=Queue.GPU, soft_time_limit=3300, time_limit=3600)
def run_evaluation(job: Job, progress: Progress) -> dict:
    """Run the EvalRun named in the job's params; progress counts (question, pipeline) pairs."""
    run = eval_run_execute(eval_run_id=job.params["eval_run_id"], progress=progress)
    if run is None:
        return {"skipped": "evaluation run deleted"}
    return {"eval_run_id": run.pk, "status": run.status, "cost": str(run.cost)}
