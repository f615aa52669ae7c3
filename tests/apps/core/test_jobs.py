from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core import services
from apps.core.errors import JobCancelled, RetryableJobError
from apps.core.models import Job, JobStatus
from workers.queues import Queue
from workers.tasks.base import job_task

pytestmark = pytest.mark.django_db


@job_task(kind="test.counts_to_three", queue=Queue.CPU)
def counts_to_three(job, progress):
    for step in range(1, 4):
        progress(step, 3, f"step {step}")
    return {"counted": 3}


@job_task(kind="test.breaks", queue=Queue.CPU)
def breaks(job, progress):
    raise ValueError("the uploaded file is not a PDF")


ATTEMPTS = {"n": 0}


@job_task(kind="test.flaky", queue=Queue.GPU)
def flaky(job, progress):
    ATTEMPTS["n"] += 1
    if ATTEMPTS["n"] < 2:
        raise RetryableJobError("database busy")
    return {"attempt": ATTEMPTS["n"]}


def test_a_job_is_claimed_once(team_a):
    job = services.job_create(kind="x", team=team_a)
    assert services.job_claim(job_id=job.pk, worker="w1") is True
    assert services.job_claim(job_id=job.pk, worker="w2") is False
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (JobStatus.RUNNING, "w1", 1)


def test_a_job_whose_worker_died_can_be_claimed_again(team_a, settings):
    job = services.job_create(kind="x", team=team_a)
    services.job_claim(job_id=job.pk, worker="dead")
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    )
    assert services.job_claim(job_id=job.pk, worker="alive") is True
    assert Job.objects.get(pk=job.pk).attempts == 2


def test_a_finished_job_is_never_claimed_again(team_a):
    job = services.job_create(kind="x", team=team_a)
    services.job_claim(job_id=job.pk, worker="w")
    services.job_succeed(job_id=job.pk, result={})
    assert services.job_claim(job_id=job.pk, worker="w", redelivered=True) is False


def test_a_cancelled_job_stops_at_its_next_progress_report(team_a):
    job = services.job_create(kind="x", team=team_a)
    services.job_claim(job_id=job.pk, worker="w")
    services.job_cancel(job=job)
    with pytest.raises(JobCancelled):
        services.job_progress(job_id=job.pk, done=1)


def test_a_job_task_runs_reports_progress_and_succeeds(team_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_start(kind="test.counts_to_three", team=team_a)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.progress_done, job.progress_total, job.result) == (3, 3, {"counted": 3})
    assert job.finished_at is not None and job.started_at is not None


def test_a_failing_job_records_a_clear_message(team_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_start(kind="test.breaks", team=team_a)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == "ValueError: the uploaded file is not a PDF"


def test_running_a_task_twice_does_the_work_once(team_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_start(kind="test.counts_to_three", team=team_a)
    task, _ = __import__("workers.tasks.registry", fromlist=["x"]).task_for_kind("test.counts_to_three")
    task.apply(args=(job.pk,))
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_an_unknown_job_kind_is_refused_with_the_known_ones(team_a):
    with pytest.raises(ValueError, match="unknown job kind 'nope'.*diagnostics.probe_cpu"):
        services.job_start(kind="nope", team=team_a)


def test_a_missing_job_row_is_logged_and_skipped(db):
    from workers.tasks.registry import task_for_kind

    task, _ = task_for_kind("test.counts_to_three")
    assert task.apply(args=(987654,)).successful()


def test_job_tasks_use_late_acks_time_limits_and_their_queue():
    from workers.tasks.registry import task_for_kind

    task, queue = task_for_kind("diagnostics.probe_gpu")
    assert (task.acks_late, task.reject_on_worker_lost, queue) == (True, True, "gpu")
    assert task.soft_time_limit == 120 and task.time_limit == 180
