"""The fixed-context prefill job on the `gpu` queue: KV once into the store, then the key indexes."""

from __future__ import annotations

from apps.core.models import Job
from apps.rag.fixed_context import PREFILL_JOB_KIND, fixed_context_prefill_execute
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind=PREFILL_JOB_KIND, queue=Queue.GPU, soft_time_limit=3600, time_limit=3660)
def prefill_fixed_context(job: Job, progress: Progress) -> dict:
    """Prefill the fixed context of the pipeline named in the job's params and build its indexes."""
    return fixed_context_prefill_execute(params=job.params, progress=progress)
