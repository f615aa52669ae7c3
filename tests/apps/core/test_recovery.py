"""Recovery after a worker dies (docs/reliability.md): a heartbeat keeps a job and its holds alive; the reaper
fails or redelivers the jobs of dead workers, their runs and holds with them; cancel reaches runs and holds."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.core.errors import JobCancelled
from apps.core.models import Job, JobStatus
from apps.core.services import job_cancel, job_claim, job_create, jobs_reap
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.pricing import Usage
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import LedgerContext, budget_save, reservations_expire
from apps.costs.services.holds import hold_open, hold_resume, job_hold_lease_s, job_holds_settle_ended
from apps.costs.services.prices import price_set
from apps.rag.models import QueryRun
from workers.tasks.base import Heartbeat, Progress

pytestmark = pytest.mark.django_db


@pytest.fixture
def price(db):
    price, _ = price_set(
        model_name="test/recovery", input_per_mtok=Decimal(1_000_000), output_per_mtok=Decimal(2_000_000),
        effective_from=timezone.now() - timedelta(days=1),
    )
    return price


def _silent_for(job: Job, seconds: float) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def _query(team, price, *, billed_calls: int, claimed: bool = True) -> QueryRun:
    """A query run under a $50 hold, as query_run_start leaves it, with ``billed_calls`` $2 rows written."""
    budget_save(team=team, hard_limit=Decimal(1000), period="month")
    reservation = hold_open(path="query", context=LedgerContext(team=team), estimate=Decimal(50)).reservation
    job = job_create(kind="rag.query", team=team, queue="gpu", params={"reservation_id": reservation.pk})
    run = QueryRun.objects.create(team=team, question="q", reservation=reservation, job=job)
    Job.objects.filter(pk=job.pk).update(params={"query_run_id": run.pk, "reservation_id": reservation.pk})
    if claimed:
        assert job_claim(job_id=job.pk, worker="gpu@dead:1")
        QueryRun.objects.filter(pk=run.pk).update(status="running")
    hold = hold_resume(reservation=reservation, context=LedgerContext(team=team, query_run_id=run.pk))
    for _ in range(billed_calls):
        hold.record(stage="generate", model_name="test/recovery", usage=Usage(prompt_tokens=2), price=price)
    return run


def test_it_fails_a_query_whose_worker_died_with_the_reason_and_settles_its_hold_to_its_rows(
    team_a, price, settings
):
    run = _query(team_a, price, billed_calls=2)
    _silent_for(run.job, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)

    assert jobs_reap() == {"redelivered": 0, "failed": 1}

    job = Job.objects.get(pk=run.job_id)
    assert job.status == JobStatus.FAILED and job.finished_at is not None
    assert "worker gpu@dead:1 lost: no heartbeat for" in job.error
    run.refresh_from_db()
    assert (run.status, run.cost, run.finished_at is not None) == ("failed", Decimal(4), True)
    assert "no heartbeat" in run.error
    reservation = Reservation.objects.get(pk=run.reservation_id)
    assert (reservation.status, reservation.actual) == (ReservationStatus.SETTLED, Decimal(4))
    assert UsageRecord.objects.filter(query_run_id=run.pk).count() == 2  # the rows stay, none added
    assert ledger_reconcile() == []
    assert jobs_reap() == {"redelivered": 0, "failed": 0}  # reaped once


def test_it_leaves_alone_a_job_whose_worker_still_beats(team_a, price, settings):
    run = _query(team_a, price, billed_calls=1)
    _silent_for(run.job, settings.PARSIMONY_JOB_STALE_AFTER_S - 5)
    assert jobs_reap() == {"redelivered": 0, "failed": 0}
    assert Job.objects.get(pk=run.job_id).status == JobStatus.RUNNING
    assert Reservation.objects.get(pk=run.reservation_id).status == ReservationStatus.HELD


def test_a_heartbeat_keeps_the_job_alive_and_its_holds_from_expiring(team_a, price, settings):
    run = _query(team_a, price, billed_calls=0)
    job = Job.objects.get(pk=run.job_id)
    short = hold_open(path="query", context=LedgerContext(team=team_a), estimate=Decimal(1), ttl_s=1).reservation
    long = hold_open(path="query", context=LedgerContext(team=team_a), estimate=Decimal(1), ttl_s=3600).reservation
    Reservation.objects.filter(pk__in=[short.pk, long.pk]).update(job=job)
    _silent_for(job, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)

    Heartbeat(job_id=job.pk, attempt=job.attempts, interval_s=15).beat()

    assert Job.objects.get(pk=job.pk).heartbeat_at > timezone.now() - timedelta(seconds=5)
    assert jobs_reap() == {"redelivered": 0, "failed": 0}
    leased = Reservation.objects.get(pk=short.pk).expires_at
    assert leased >= timezone.now() + timedelta(seconds=job_hold_lease_s() - 5)
    assert Reservation.objects.get(pk=long.pk).expires_at == long.expires_at  # never shortened
    assert reservations_expire(now=timezone.now() + timedelta(seconds=job_hold_lease_s() - 5)) == 0


def test_the_heartbeat_thread_beats_until_the_task_returns(monkeypatch):
    beats = []
    monkeypatch.setattr(Heartbeat, "beat", lambda self: beats.append(time.monotonic()))
    with Heartbeat(job_id=1, attempt=1, interval_s=0.02):
        time.sleep(0.2)
    after = len(beats)
    time.sleep(0.1)
    assert after >= 3 and len(beats) == after


def test_a_worker_whose_job_was_reaped_stops_at_its_next_progress_report(team_a, price, settings):
    run = _query(team_a, price, billed_calls=0)
    assert job_claim(job_id=run.job_id, worker="gpu@alive:2") is False  # a redelivered message skips a live job
    Progress(run.job_id, attempt=1)(1, 3)
    _silent_for(run.job, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    jobs_reap()
    with pytest.raises(JobCancelled, match="no longer run by this worker"):
        Progress(run.job_id, attempt=1)(2, 3)


def test_cancelling_a_queued_query_cancels_its_run_and_releases_its_hold(team_a, price):
    run = _query(team_a, price, billed_calls=0, claimed=False)
    assert job_cancel(job=run.job) is True
    run.refresh_from_db()
    assert (run.job.status, run.status, run.finish_reason) == (JobStatus.CANCELLED, "cancelled", "cancelled")
    assert Reservation.objects.get(pk=run.reservation_id).status == ReservationStatus.RELEASED
    assert ledger_reconcile() == []


def test_a_cancelled_running_job_leaves_its_hold_to_its_worker_until_the_worker_stops_beating(
    team_a, price, settings
):
    run = _query(team_a, price, billed_calls=1)
    job_cancel(job=run.job)
    run.refresh_from_db()
    assert (run.status, run.error, run.cost) == ("cancelled", "cancelled", Decimal(2))  # its rows so far
    # Its worker may still be writing a row: the hold stays held (and is extended) until it stops.
    assert Reservation.objects.get(pk=run.reservation_id).status == ReservationStatus.HELD
    assert job_holds_settle_ended() == 0
    _silent_for(run.job, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)  # ... and then it died
    assert job_holds_settle_ended() == 1
    reservation = Reservation.objects.get(pk=run.reservation_id)
    assert (reservation.status, reservation.actual) == (ReservationStatus.SETTLED, Decimal(2))
    assert ledger_reconcile() == []


def test_an_idempotent_job_is_redelivered_and_runs_again_until_its_attempts_are_spent(
    team_a, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.DATA_ROOT = tmp_path
    job = job_create(kind="diagnostics.probe_cpu", team=team_a)
    job_claim(job_id=job.pk, worker="cpu@dead:1")
    _silent_for(job, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_reap() == {"redelivered": 1, "failed": 0}
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)

    spent = job_create(kind="diagnostics.probe_cpu", team=team_a)
    Job.objects.filter(pk=spent.pk).update(status=JobStatus.RUNNING, attempts=settings.PARSIMONY_JOB_MAX_ATTEMPTS)
    _silent_for(spent, settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    assert jobs_reap() == {"redelivered": 0, "failed": 1}
    assert Job.objects.get(pk=spent.pk).error.endswith(f"gave up after {settings.PARSIMONY_JOB_MAX_ATTEMPTS} attempts")
