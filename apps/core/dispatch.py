"""Sending tasks: to Celery when a broker is configured, else to an in-process thread pool.

The embedded default (no broker) still runs jobs in the background, one per queue at a time,
so the web UI shows live progress exactly as it does with real workers.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, transaction

logger = logging.getLogger(__name__)

_executors: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _executor(queue: str) -> ThreadPoolExecutor:
    with _lock:
        if queue not in _executors:
            _executors[queue] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parsimony-{queue}")
        return _executors[queue]


def _run_in_process(task, args: tuple) -> None:
    try:
        task.apply(args=args, throw=False)
    except Exception:  # the task records its own failure on the Job row
        logger.exception("in-process task %s crashed", task.name)


def _run_on_thread(task, args: tuple) -> None:
    try:
        _run_in_process(task, args)
    finally:
        # This thread's connection is its own: close it rather than leak it.
        close_old_connections()


def task_send(*, task, args: tuple, queue: str) -> None:
    """Send ``task(*args)`` after the current transaction commits."""

    def send() -> None:
        if settings.CELERY_BROKER_URL:
            task.apply_async(args=args, queue=queue)
        elif settings.PARSIMONY_INPROCESS_SYNC:
            _run_in_process(task, args)
        else:
            _executor(queue).submit(_run_on_thread, task, args)

    transaction.on_commit(send)


def job_enqueue(*, job, task) -> None:
    task_send(task=task, args=(job.pk,), queue=job.queue)
