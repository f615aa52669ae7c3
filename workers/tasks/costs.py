"""Periodic cost bookkeeping on the `cpu` queue (scheduled by celery beat, see workers/celery.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import reservations_expire
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import TASK_QUEUES

logger = logging.getLogger(__name__)

TASK_QUEUES["costs.expire_reservations"] = Queue.CPU.value


@app.task(name="costs.expire_reservations", ignore_result=True, soft_time_limit=50, time_limit=60)
def expire_reservations() -> int:
    """Release the budget holds of workers that died. Idempotent: each hold is released at most once."""
    return reservations_expire()


TASK_QUEUES["costs.reconcile_ledger"] = Queue.CPU.value


@app.task(name="costs.reconcile_ledger", ignore_result=True, soft_time_limit=1700, time_limit=1800)
def reconcile_ledger() -> int:
    """Daily: reconcile the last two days of the ledger; log every difference. Returns how many."""
    differences = ledger_reconcile(since=timezone.now() - timedelta(days=2))
    for difference in differences:
        logger.error("ledger does not reconcile: %s", difference)
    return len(differences)
