"""Periodic cost bookkeeping on the `cpu` queue (scheduled by celery beat, see workers/celery.py)."""

from __future__ import annotations

from apps.costs.services import reservations_expire
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import TASK_QUEUES

TASK_QUEUES["costs.expire_reservations"] = Queue.CPU.value


@app.task(name="costs.expire_reservations", ignore_result=True, soft_time_limit=50, time_limit=60)
def expire_reservations() -> int:
    """Release the budget holds of workers that died. Idempotent: each hold is released at most once."""
    return reservations_expire()
