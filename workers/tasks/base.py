"""The base for every job task: claim atomically, report progress, record the outcome.

``job_task`` registers a function as the Celery task named ``apps.core.jobs.job_task_name(kind)``;
the web process sends jobs by that name and never imports this package.

Retry policy: ``RetryableJobError`` (and database connection errors) are retried with
back-off; everything else is permanent and marks the job failed with its message.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

from apps.core import services as job_services
from apps.core.errors import JobCancelled, RetryableJobError
from apps.core.jobs import job_kind_register, job_task_name
from apps.core.models import Job
from workers.celery import app
from workers.queues import Queue

logger = logging.getLogger(__name__)

# task name -> queue, for tasks sent without one; filled by @job_task (and workers.tasks.costs).
TASK_QUEUES: dict[str, str] = {}


def route_task(name: str, args, kwargs, options, task=None, **kw) -> dict | None:
    """Celery router: each job task goes to the queue it was declared with."""
    queue = TASK_QUEUES.get(name)
    return {"queue": queue} if queue else None


@dataclass
class Progress:
    """Handed to a job function: report how far it got; raises JobCancelled if cancelled."""

    job_id: int

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        job_services.job_progress(job_id=self.job_id, done=done, total=total, message=message)


class JobTask(Task):
    acks_late = True
    reject_on_worker_lost = True
    max_retries = 3
    default_retry_delay = 10
    job_function: Callable[[Job, Progress], dict[str, Any] | None]

    def run_job(self, job_id: int) -> None:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        if not Job.objects.filter(pk=job_id).exists():
            logger.warning("job %s does not exist (deleted before it ran); nothing to do", job_id)
            return
        if not job_services.job_claim(job_id=job_id, worker=worker, redelivered=redelivered):
            logger.info("job %s is finished or held by another worker; skipping", job_id)
            return
        job = Job.objects.get(pk=job_id)
        try:
            result = self.job_function(job, Progress(job_id))
        except JobCancelled:
            logger.info("job %s cancelled", job_id)
        except (RetryableJobError, OperationalError) as exc:
            if self.request.retries >= self.max_retries:
                job_services.job_fail(job_id=job_id, error=f"gave up after {self.max_retries} retries: {exc}")
                return
            job_services.job_requeue(job_id=job_id, error=str(exc))
            raise self.retry(exc=exc, countdown=self.default_retry_delay * (2**self.request.retries)) from exc
        except SoftTimeLimitExceeded:
            job_services.job_fail(job_id=job_id, error=f"time limit exceeded ({self.soft_time_limit or 'default'} s)")
        except Exception as exc:  # permanent: record a clear message, never a silent loss
            logger.exception("job %s failed", job_id)
            job_services.job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        else:
            job_services.job_succeed(job_id=job_id, result=result or {})


def job_task(*, kind: str, queue: Queue, soft_time_limit: int | None = None, time_limit: int | None = None):
    """Register ``fn(job, progress) -> result dict`` as the Celery task that runs jobs of ``kind``.

    ``queue`` must match the kind's entry in ``apps.core.jobs.JOB_QUEUES`` (a kind not listed
    there, such as a test's, is added).
    """
    job_kind_register(kind=kind, queue=queue.value)

    def decorate(fn: Callable[[Job, Progress], dict[str, Any] | None]) -> Task:
        # Task options become attributes of the generated task class, job_function included.
        options: dict[str, Any] = {
            "name": job_task_name(kind),
            "base": JobTask,
            "bind": True,
            "job_function": staticmethod(fn),
        }
        if soft_time_limit:
            options["soft_time_limit"] = soft_time_limit
        if time_limit:
            options["time_limit"] = time_limit

        def run(self: JobTask, job_id: int) -> None:
            self.run_job(job_id)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        task = app.task(**options)(run)
        TASK_QUEUES[options["name"]] = queue.value
        return task

    return decorate
