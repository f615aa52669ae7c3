"""Writes to Job rows. Claiming is a conditional UPDATE, so two workers never run one job.

Jobs are enqueued by task name (``apps.core.dispatch``): nothing here imports ``workers``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.core import dispatch
from apps.core.errors import JobCancelled
from apps.core.jobs import (
    JOB_REDELIVERABLE,
    JobEnd,
    job_endings,
    job_queue_choose,
    job_task_name,
)
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
    queue: str | None = None,
) -> Job:
    """Create a job row and enqueue its task, by name, once the surrounding transaction commits.

    ``queue``: one of the kind's queues (``apps.core.jobs.JOB_QUEUE_CHOICES``), chosen by the caller
    (``model_work_queue``); None: the kind's default. The row keeps it: a redelivery goes there too.
    An unknown ``kind``, or a queue the kind does not run on, raises ValueError listing the valid ones.
    """
    queue = job_queue_choose(kind, queue)
    if not settings.CELERY_BROKER_URL:
        jobs_reap_maybe()  # in-process: no beat runs the reaper
    job = job_create(kind=kind, team=team, created_by=created_by, params=params, queue=queue, total=total)
    dispatch.job_enqueue(job=job, task=job_task_name(kind))
    return job


def job_claim(*, job_id: int, worker: str, queue: str | None = None) -> bool:
    """Atomically move a job to running. False means someone else has it, or it is finished.

    A running job may be claimed again only when its heartbeat is stale (its worker died): a message
    the broker redelivers while the job still runs elsewhere (its visibility timeout) is skipped.
    ``queue``: the queue the message came from, when known; a job whose row names another queue is not
    claimed (a message of a stage the job has left, see ``job_continue``, or of a queue it was moved off).
    """
    now = timezone.now()
    claimable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, heartbeat_at__lt=_stale_before(now))
    jobs = Job.objects.filter(claimable, pk=job_id)
    if queue is not None:
        jobs = jobs.filter(queue=queue)
    updated = jobs.update(
        status=JobStatus.RUNNING,
        worker=worker[:255],
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        error="",
    )
    return updated == 1


def _stale_before(now):
    return now - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S)


def job_heartbeat(*, job_id: int, attempt: int) -> bool:
    """One cheap UPDATE: the worker running ``attempt`` of the job is alive. False when the job is no
    longer this attempt's (reaped and claimed again). A cancelled job still beats until its task stops,
    so the holds its work runs under are never settled under it (``apps.costs.services.holds``)."""
    return Job.objects.filter(pk=job_id, attempts=attempt).update(heartbeat_at=timezone.now()) == 1


def job_progress(
    *, job_id: int, done: int, total: int | None = None, message: str | None = None, attempt: int | None = None
) -> None:
    """Record progress and beat the heart. Raises JobCancelled when the job was cancelled meanwhile, or
    (with ``attempt``) when it is no longer this attempt's: the reaper took it from a worker it thought dead."""
    fields: dict[str, Any] = {"progress_done": done, "heartbeat_at": timezone.now()}
    if total is not None:
        fields["progress_total"] = total
    if message is not None:
        fields["message"] = message[:255]
    running = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING)
    if attempt is not None:
        running = running.filter(attempts=attempt)
    if running.update(**fields):
        return
    if Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists():
        raise JobCancelled(f"job {job_id} was cancelled")
    if attempt is not None:
        raise JobCancelled(f"job {job_id} is no longer run by this worker (attempt {attempt})")


def _this_attempt(jobs, attempt: int | None):
    # A worker passes the attempt it claimed: a job reaped and claimed again is no longer its to finish.
    return jobs if attempt is None else jobs.filter(attempts=attempt)


def job_succeed(*, job_id: int, result: dict[str, Any] | None = None, attempt: int | None = None) -> None:
    fields: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": timezone.now(),
        "result": result or {},
        "message": "done",
    }
    # Progress reads complete on success even if the task never set a total.
    _this_attempt(Job.objects.filter(pk=job_id, status=JobStatus.RUNNING), attempt).update(
        progress_done=F("progress_total"), **fields
    )


def job_fail(*, job_id: int, error: str, attempt: int | None = None) -> bool:
    """Fail the job with ``error``, and its records and holds with it (``job_end``: a document its task
    left processing is failed with the same reason). False, changing nothing, when the job had already
    finished (or is no longer this attempt's)."""
    jobs = _this_attempt(Job.objects.filter(pk=job_id).exclude(status__in=FINISHED_STATUSES), attempt)
    if not jobs.update(status=JobStatus.FAILED, finished_at=timezone.now(), error=error[:10_000]):
        return False
    job_end(job=Job.objects.get(pk=job_id), outcome=JobEnd.FAILED, reason=error)
    return True


# params key: how many attempts the job had used when its current stage began (``job_continue``).
STAGE_AFTER_ATTEMPTS = "stage_after_attempts"


def job_continue(
    *, job_id: int, queue: str, params: dict[str, Any], message: str = "", attempt: int | None = None,
    countdown: float = 0.0,
) -> bool:
    """The running job's stage is done and the job goes on (``apps.core.jobs.JobContinue``): the same row
    goes back to queued on ``queue`` with ``params`` and is sent there once this commits. Its attempts
    keep counting (they fence a worker the reaper took the job from); the reaper allows each stage its
    own PARSIMONY_JOB_MAX_ATTEMPTS (``STAGE_AFTER_ATTEMPTS``). False when the job is no longer this
    attempt's to continue (cancelled, or reaped); nothing is sent then. ``countdown``: seconds before the
    next stage is sent."""
    job = Job.objects.get(pk=job_id)
    queue = job_queue_choose(job.kind, queue)  # ValueError naming the kind's queues when it is not one of them
    with transaction.atomic():
        running = _this_attempt(Job.objects.filter(pk=job_id, status=JobStatus.RUNNING), attempt)
        updated = running.update(
            status=JobStatus.QUEUED,
            queue=str(queue),
            params={**params, STAGE_AFTER_ATTEMPTS: attempt if attempt is not None else job.attempts},
            message=(message or f"waiting for the {queue} queue")[:255],
        )
        if updated:
            job.refresh_from_db()
            # sent once this commits (``countdown`` seconds later)
            dispatch.job_enqueue(job=job, task=job_task_name(job.kind), countdown=countdown)
    return updated == 1


def job_params_update(*, job_id: int, attempt: int | None = None, **values: Any) -> bool:
    """Merge ``values`` into a running job's params (a stage's record of what a redelivery must know,
    written in the transaction of the work it describes). False when the job is not this attempt's."""
    with transaction.atomic():
        jobs = _this_attempt(Job.objects.select_for_update().filter(pk=job_id, status=JobStatus.RUNNING), attempt)
        job = jobs.first()
        if job is None:
            return False
        Job.objects.filter(pk=job_id).update(params={**job.params, **values})
    return True


def job_requeue(*, job_id: int, error: str) -> None:
    """A retryable failure: back to queued so the retry can claim it."""
    Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        status=JobStatus.QUEUED, error=f"retrying after: {error}"[:10_000]
    )


def job_end(*, job: Job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """Move the job's own records (documents, runs) and holds to where ``outcome`` leaves them, through
    its kind's endings (``apps.core.jobs.JOB_ENDINGS``). Each ending is idempotent and touches only
    records still unfinished. ``work_stopped``: False while a worker may still be stopping the work
    (a cancelled running job): its holds are then left to it (it settles them as it stops)."""
    for path in job_endings(job.kind):
        import_string(path)(job=job, outcome=outcome, reason=reason, work_stopped=work_stopped)


def job_run_end(*, runs, outcome: JobEnd, reason: str, cost) -> None:
    """A job's run row (a QueryRun, an AgentRun: statuses queued/running/succeeded/failed) when the job
    ended without its task finishing it: back to queued when redelivered, else failed with the reason
    and ``cost``, the sum of the ledger rows it wrote (they stay). Unfinished runs only."""
    unfinished = runs.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
    if outcome == JobEnd.REDELIVERED:
        unfinished.update(status=JobStatus.QUEUED, error="")
        return
    error = "cancelled" if outcome == JobEnd.CANCELLED else f"{reason}"
    unfinished.update(status=JobStatus.FAILED, error=error[:10_000], cost=cost, finished_at=timezone.now())


@transaction.atomic
def job_cancel(*, job: Job) -> bool:
    """Cancel a queued or running job, and with it its documents, runs and holds.

    A running task stops at its next progress report; until it has, its holds stay held under its
    heartbeat and it settles them itself (``apps.costs.services.holds.job_holds_end``)."""
    updated = (
        Job.objects.filter(pk=job.pk)
        .exclude(status__in=FINISHED_STATUSES)
        .update(status=JobStatus.CANCELLED, finished_at=timezone.now(), message="cancelled")
    )
    job.refresh_from_db()
    if updated:
        alive = job.heartbeat_at is not None and job.heartbeat_at >= _stale_before(timezone.now())
        job_end(job=job, outcome=JobEnd.CANCELLED, reason="cancelled", work_stopped=not alive)
    return updated == 1


def jobs_reap(*, now: datetime | None = None) -> dict[str, int]:
    """Recover the jobs whose worker died: running, with a heartbeat older than PARSIMONY_JOB_STALE_AFTER_S.

    An idempotent kind (``JOB_REDELIVERABLE``) with attempts left goes back to queued and is sent again,
    its records back to pending; any other is failed with the reason, its records failed and its holds
    settled to their ledger rows (``job_end``). Each job is taken with a conditional UPDATE, so a
    heartbeat that comes back, or a second reaper, keeps it from being taken twice. Returns the counts.
    """
    now = now or timezone.now()
    stale_before = _stale_before(now)
    counts = {JobEnd.REDELIVERED.value: 0, JobEnd.FAILED.value: 0}
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=stale_before).order_by("pk"):
        silent_s = int((now - job.heartbeat_at).total_seconds())
        lost = f"worker {job.worker or '?'} lost: no heartbeat for {silent_s} s (attempt {job.attempts})"
        redeliver = job.kind in JOB_REDELIVERABLE
        # A staged job (``job_continue``) has its attempts counted from the start of its current stage.
        stage_attempts = job.attempts - int((job.params or {}).get(STAGE_AFTER_ATTEMPTS) or 0)
        if redeliver and stage_attempts < settings.PARSIMONY_JOB_MAX_ATTEMPTS:
            outcome = JobEnd.REDELIVERED
            fields: dict[str, Any] = {
                "status": JobStatus.QUEUED, "error": f"{lost}; redelivered", "message": "redelivered"
            }
        else:
            outcome = JobEnd.FAILED
            gave_up = f"; gave up after {stage_attempts} attempts" if redeliver else ""
            fields = {"status": JobStatus.FAILED, "error": lost + gave_up, "message": "worker lost", "finished_at": now}
        with transaction.atomic():
            taken = Job.objects.filter(
                pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts, heartbeat_at__lt=stale_before
            ).update(**fields)
            if not taken:
                continue
            job_end(job=job, outcome=outcome, reason=fields["error"])
            if outcome == JobEnd.REDELIVERED:
                dispatch.job_enqueue(job=job, task=job_task_name(job.kind))  # sent once this commits
        counts[outcome.value] += 1
        logger.warning("job %s (%s): %s", job.pk, job.kind, fields["error"])
    return counts


_last_reap = 0.0


def jobs_reap_maybe() -> None:
    """Without celery beat (the embedded default) the reaper runs here, at most every PARSIMONY_JOB_REAP_EVERY_S."""
    global _last_reap
    if time.monotonic() - _last_reap >= settings.PARSIMONY_JOB_REAP_EVERY_S:
        _last_reap = time.monotonic()
        jobs_reap()
