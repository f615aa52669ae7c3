"""A real Celery worker process on Redis runs a job; progress and success land in the database."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from apps.core.models import Job, JobStatus
from apps.core.services import job_start
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_runs_a_job_and_reports_progress(celery_processes, team_a):
    processes = celery_processes()
    worker = processes.worker("integration")
    job = job_start(kind="diagnostics.probe_gpu", team=team_a, params={"sleep_s": 3})

    seen_running = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, progress_done__gte=3).first(),
        timeout=120, processes=processes, alive=[worker],
    )
    assert seen_running.progress_total == 4
    assert seen_running.message == "waiting on an optional delay"

    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=JobStatus.SUCCEEDED).first(),
        timeout=60, processes=processes, alive=[worker],
    )
    assert (done.progress_done, done.progress_total) == (4, 4)
    assert done.result["pid"] == worker.pid != os.getpid()
    assert done.result["database_vendor"] == connection.vendor
    assert done.result["device"] in {"cpu", "cuda"}
    assert done.attempts == 1
