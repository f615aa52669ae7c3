"""Writes to Job rows. Claiming is a conditional UPDATE, so two workers never run one job.

Jobs are enqueued by task name (``apps.core.dispatch``): nothing here imports ``workers``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core import dispatch
from apps.core.errors import JobCancelled
from apps.core.jobs import job_kind_queue, job_task_name
from apps.core.models import FINISHED_STATUSES, Job, JobStatus

logger = logging.getLogger(__name__)


def job_create(
    *,
    kind: str,
    team=None,
    created_by=None,
    params: dict[str, Any] | None = None,
    queue: str = "cpu",
    total: int = 0,
) -> Job:
    return Job.objects.create(
        kind=kind,
        team=team,
        created_by=created_by if getattr(created_by, "pk", None) else None,
        params=params or {},
        queue=queue,
        progress_total=total,
    )


def job_start(
    *,
    kind: str,
    team=None,
    created_by=None,
    params: dict[str, Any] | None = None,
    total: int = 0,
) -> Job:
    """Create a job row and enqueue its task, by name, once the surrounding transaction commits.

    An unknown ``kind`` raises ValueError listing the known ones (``apps.core.jobs``).
    """
    queue = job_kind_queue(kind)
    job = job_create(kind=kind, team=team, created_by=created_by, params=params, queue=queue, total=total)
    dispatch.job_enqueue(job=job, task=job_task_name(kind))
    return job


def job_claim(*, job_id: int, worker: str, redelivered: bool = False) -> bool:
    """Atomically move a job to running. False means someone else has it, or it is finished.

    A running job may be claimed again when its heartbeat is stale (its worker died) or when
    the broker redelivered the message (acks_late + a lost worker).
    """
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S)
    claimable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, heartbeat_at__lt=stale_before)
    if redelivered:
        claimable |= Q(status=JobStatus.RUNNING)
    updated = Job.objects.filter(claimable, pk=job_id).update(
        status=JobStatus.RUNNING,
        worker=worker[:255],
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        error="",
    )
    return updated == 1


def job_progress(*, job_id: int, done: int, total: int | None = None, message: str | None = None) -> None:
    """Record progress and beat the heart. Raises JobCancelled when the job was cancelled meanwhile."""
    fields: dict[str, Any] = {"progress_done": done, "heartbeat_at": timezone.now()}
    if total is not None:
        fields["progress_total"] = total
    if message is not None:
        fields["message"] = message[:255]
    updated = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(**fields)
    if updated == 0 and Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists():
        raise JobCancelled(f"job {job_id} was cancelled")


def job_succeed(*, job_id: int, result: dict[str, Any] | None = None) -> None:
    fields: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": timezone.now(),
        "result": result or {},
        "message": "done",
    }
    # Progress reads complete on success even if the task never set a total.
    Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        progress_done=F("progress_total"), **fields
    )


def job_fail(*, job_id: int, error: str) -> None:
    Job.objects.filter(pk=job_id).exclude(status__in=FINISHED_STATUSES).update(
        status=JobStatus.FAILED, finished_at=timezone.now(), error=error[:10_000]
    )


def job_requeue(*, job_id: int, error: str) -> None:
    """A retryable failure: back to queued so the retry can claim it."""
    Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        status=JobStatus.QUEUED, error=f"retrying after: {error}"[:10_000]
    )


@transaction.atomic
def job_cancel(*, job: Job) -> bool:
    """Cancel a queued or running job; a running task stops at its next progress report."""
    updated = (
        Job.objects.filter(pk=job.pk)
        .exclude(status__in=FINISHED_STATUSES)
        .update(status=JobStatus.CANCELLED, finished_at=timezone.now(), message="cancelled")
    )
    job.refresh_from_db()
    return updated == 1
