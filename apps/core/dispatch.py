"""Sending tasks by name: to Celery when a broker is configured, else to an in-process thread pool.

``apps`` never imports the task modules: the Celery app is named in settings
(``PARSIMONY_CELERY_APP``) and tasks are sent by name (``apps.core.jobs.job_task_name``).
The embedded default (no broker) looks the task up in that app's registry and runs it here,
in the background, one per queue at a time, so the web UI shows live progress exactly as it
does with real workers.
"""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils.module_loading import import_string

from apps.core.models import Job

logger = logging.getLogger(__name__)

_executors: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def celery_app() -> Any:
    """The project's Celery app (``settings.PARSIMONY_CELERY_APP``), imported on first use."""
    return import_string(settings.PARSIMONY_CELERY_APP)


def registered_task(name: str) -> Any:
    """The task called ``name`` in the Celery app's registry, importing the app's task modules
    first if needed (a worker does this at start; the web process only in in-process mode)."""
    app = celery_app()
    if name not in app.tasks:
        with _lock:
            for module in app.conf.include or ():
                importlib.import_module(module)
    try:
        return app.tasks[name]
    except KeyError:
        raise ValueError(f"no task named {name!r} is registered with the Celery app") from None


def _executor(queue: str) -> ThreadPoolExecutor:
    with _lock:
        if queue not in _executors:
            _executors[queue] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parsimony-{queue}")
        return _executors[queue]


def _run_in_process(task: Any, args: tuple) -> None:
    try:
        task.apply(args=args, throw=False)
    except Exception:  # the task records its own failure on the Job row
        logger.exception("in-process task %s crashed", task.name)


def _run_on_thread(task: Any, args: tuple) -> None:
    try:
        _run_in_process(task, args)
    finally:
        # This thread's connection is its own: close it rather than leak it.
        close_old_connections()


def task_send(*, task_name: str, args: tuple, queue: str, countdown: float = 0.0) -> None:
    """Send the task called ``task_name`` with ``args`` to ``queue`` after the current transaction commits,
    ``countdown`` seconds later (in-process: a timer hands it to the queue's thread then; synchronous
    in-process mode, the tests', runs it at once)."""

    def send() -> None:
        if settings.CELERY_BROKER_URL:
            if countdown > 0:
                celery_app().send_task(task_name, args=args, queue=queue, countdown=countdown)
            else:
                celery_app().send_task(task_name, args=args, queue=queue)
            return
        task = registered_task(task_name)
        if settings.PARSIMONY_INPROCESS_SYNC:
            _run_in_process(task, args)
        elif countdown > 0:
            timer = threading.Timer(countdown, lambda: _executor(queue).submit(_run_on_thread, task, args))
            timer.daemon = True
            timer.start()
        else:
            _executor(queue).submit(_run_on_thread, task, args)

    transaction.on_commit(send)


def job_enqueue(*, job: Job, task: str, countdown: float = 0.0) -> None:
    """Send the job's id to the task named ``task`` (see ``apps.core.jobs.job_task_name``), on the job's queue,
    ``countdown`` seconds from the commit."""
    task_send(task_name=task, args=(job.pk,), queue=job.queue, countdown=countdown)
