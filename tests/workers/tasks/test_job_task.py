"""The job task decorator (workers/tasks/base.py): progress on the Job row, clear failures, idempotent
runs, late acks and time limits, one queue per kind."""

import pytest

from apps.core import services
from apps.core.errors import RetryableJobError
from apps.core.jobs import job_kind_queue
from apps.core.models import Job, JobStatus
from workers.queues import Queue
from workers.tasks.base import job_task, route_task

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
    counts_to_three.apply(args=(job.pk,))
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_a_missing_job_row_is_logged_and_skipped(db):
    assert counts_to_three.apply(args=(987654,)).successful()


def test_job_tasks_use_late_acks_time_limits_and_their_queue():
    from workers.tasks.diagnostics import probe_gpu

    assert (probe_gpu.acks_late, probe_gpu.reject_on_worker_lost) == (True, True)
    assert probe_gpu.soft_time_limit == 120 and probe_gpu.time_limit == 180
    assert job_kind_queue("diagnostics.probe_gpu") == "gpu"
    assert route_task("parsimony.diagnostics.probe_gpu", (), {}, {}) == {"queue": "gpu"}


def test_a_job_task_must_keep_its_kinds_queue():
    with pytest.raises(ValueError, match="'rag.query' runs on the 'gpu' queue"):
        job_task(kind="rag.query", queue=Queue.CPU)
