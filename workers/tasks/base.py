"""The base for every job task: claim atomically, report progress, record the outcome.

``job_task`` registers a function as the Celery task named ``apps.core.jobs.job_task_name(kind)``;
the web process sends jobs by that name and never imports this package.

While the job runs, ``Heartbeat`` beats its heartbeat and extends its holds; a job whose worker
died is redelivered or failed by the reaper (``apps.core.services.jobs_reap``, docs/reliability.md).

Retry policy: ``RetryableJobError`` (and database connection errors) are retried with
back-off; everything else is permanent and marks the job failed with its message.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import OperationalError, connection

from apps.core import services as job_services
from apps.core.errors import JobCancelled, RetryableJobError
from apps.core.jobs import JobContinue, JobEnd, current_job_id, job_kind_register, job_task_name
from apps.core.models import Job, JobStatus
from apps.costs.services.holds import job_holds_extend, job_holds_link
from workers.celery import app
from workers.queues import Queue

logger = logging.getLogger(__name__)

QUEUE_NAMES = frozenset(queue.value for queue in Queue)
# task name -> queue, for tasks sent without one; filled by @job_task (and workers.tasks.costs).
TASK_QUEUES: dict[str, str] = {}


def route_task(name: str, args, kwargs, options, task=None, **kw) -> dict | None:
    """Celery router: each job task goes to the queue it was declared with."""
    queue = TASK_QUEUES.get(name)
    return {"queue": queue} if queue else None


@dataclass
class Progress:
    """Handed to a job function: report how far it got; raises JobCancelled if cancelled (or, with
    ``attempt``, if the job was taken from this worker)."""

    job_id: int
    attempt: int | None = None

    def __call__(self, done: int, total: int | None = None, message: str | None = None) -> None:
        job_services.job_progress(job_id=self.job_id, done=done, total=total, message=message, attempt=self.attempt)


class Heartbeat:
    """While a job runs, a thread of its own beats the job's heartbeat and keeps its holds from expiring,
    every PARSIMONY_JOB_HEARTBEAT_S: two small indexed UPDATEs (``job_heartbeat``, ``job_holds_extend``).
    A thread, not the progress reports, because one model call (a long prefill) may report nothing for
    minutes; it dies with its process, which is what lets the reaper tell a dead worker from a slow one."""

    def __init__(self, *, job_id: int, attempt: int, interval_s: float) -> None:
        self.job_id, self.attempt, self.interval_s = job_id, attempt, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        job_services.job_heartbeat(job_id=self.job_id, attempt=self.attempt)
        job_holds_extend(job_id=self.job_id)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.beat()
                except Exception:  # a busy database: the next beat tries again
                    logger.exception("heartbeat of job %s failed", self.job_id)
        finally:
            connection.close()  # this thread's own connection


class JobTask(Task):
    acks_late = True
    reject_on_worker_lost = True
    max_retries = 3
    default_retry_delay = 10
    job_function: Callable[[Job, Progress], dict[str, Any] | JobContinue | None]

    def delivered_queue(self) -> str | None:
        """The queue this message was taken from (None when run in-process, or not one of ours)."""
        info = getattr(self.request, "delivery_info", None) or {}
        queue = info.get("routing_key")
        return queue if queue in QUEUE_NAMES else None

    def run_job(self, job_id: int) -> None:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        if not Job.objects.filter(pk=job_id).exists():
            logger.warning("job %s does not exist (deleted before it ran); nothing to do", job_id)
            return
        if not job_services.job_claim(job_id=job_id, worker=worker, queue=self.delivered_queue()):
            logger.info("job %s is finished, held by a live worker, or on another queue; skipping", job_id)
            return
        job = Job.objects.get(pk=job_id)
        attempt = job.attempts
        job_holds_link(job=job)
        token = current_job_id.set(job_id)
        try:
            with Heartbeat(job_id=job_id, attempt=attempt, interval_s=settings.PARSIMONY_JOB_HEARTBEAT_S):
                self._run_claimed(job, attempt)
        finally:
            current_job_id.reset(token)

    def _run_claimed(self, job: Job, attempt: int) -> None:
        job_id = job.pk
        try:
            result = self.job_function(job, Progress(job_id, attempt))
        except JobCancelled:
            logger.info("job %s cancelled", job_id)
            job.refresh_from_db()
            if job.status == JobStatus.CANCELLED and job.attempts == attempt:
                # The work has stopped: settle what the cancel left to it (its holds).
                job_services.job_end(job=job, outcome=JobEnd.CANCELLED, reason="cancelled")
        except (RetryableJobError, OperationalError) as exc:
            if self.request.retries >= self.max_retries:
                job_services.job_fail(
                    job_id=job_id, error=f"gave up after {self.max_retries} retries: {exc}", attempt=attempt
                )
                return
            job_services.job_requeue(job_id=job_id, error=str(exc))
            raise self.retry(exc=exc, countdown=self.default_retry_delay * (2**self.request.retries)) from exc
        except SoftTimeLimitExceeded:
            job_services.job_fail(
                job_id=job_id, error=f"time limit exceeded ({self.soft_time_limit or 'default'} s)", attempt=attempt
            )
        except Exception as exc:  # permanent: record a clear message, never a silent loss
            logger.exception("job %s failed", job_id)
            job_services.job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}", attempt=attempt)
        else:
            if isinstance(result, JobContinue):  # the next stage, on its queue (maybe this one, behind others)
                if not job_services.job_continue(
                    job_id=job_id, queue=result.queue, params=result.params, message=result.message, attempt=attempt,
                    countdown=result.countdown,
                ):
                    job.refresh_from_db()  # cancelled during the stage: settle what the cancel left to it
                    if job.status == JobStatus.CANCELLED and job.attempts == attempt:
                        job_services.job_end(job=job, outcome=JobEnd.CANCELLED, reason="cancelled")
                return
            job_services.job_succeed(job_id=job_id, result=result or {}, attempt=attempt)


def job_task(*, kind: str, queue: Queue, soft_time_limit: int | None = None, time_limit: int | None = None):
    """Register ``fn(job, progress) -> result dict`` as the Celery task that runs jobs of ``kind``. A
    staged job's function returns ``JobContinue`` at the end of each stage but the last.

    ``queue`` must match the kind's entry in ``apps.core.jobs.JOB_QUEUES`` (a kind not listed
    there, such as a test's, is added).
    """
    job_kind_register(kind=kind, queue=queue.value)

    def decorate(fn: Callable[[Job, Progress], dict[str, Any] | JobContinue | None]) -> Task:
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
