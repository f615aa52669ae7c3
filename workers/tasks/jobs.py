"""The reaper on the `cpu` queue (scheduled by celery beat, see workers/celery.py): recovery after a worker dies.

Jobs whose heartbeat went stale are redelivered or failed with a reason, their documents and runs moved
to a terminal state and their holds settled (``apps.core.services.jobs_reap``); holds still held by jobs
that ended while their worker died are settled too (``job_holds_settle_ended``). docs/reliability.md.
"""

from __future__ import annotations

import logging

from apps.core.services import jobs_reap
from apps.costs.services.holds import job_holds_settle_ended
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import TASK_QUEUES

logger = logging.getLogger(__name__)

TASK_QUEUES["core.reap_jobs"] = Queue.CPU.value


@app.task(name="core.reap_jobs", ignore_result=True, soft_time_limit=50, time_limit=60)
def reap_jobs() -> dict[str, int]:
    """Redeliver or fail the jobs of dead workers; settle the holds their ends left. Idempotent."""
    counts = jobs_reap()
    counts["holds_settled"] = job_holds_settle_ended()
    if any(counts.values()):
        logger.warning("reaper: %s", counts)
    return counts
