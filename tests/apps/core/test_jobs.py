from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core import services
from apps.core.dispatch import celery_app, registered_task
from apps.core.errors import JobCancelled
from apps.core.jobs import JOB_QUEUES, job_task_name
from apps.core.models import Job, JobStatus

pytestmark = pytest.mark.django_db


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
    assert services.job_claim(job_id=job.pk, worker="w") is False


def test_a_job_fails_once_and_keeps_its_first_reason(team_a):
    """A failure reported twice (Celery 5.7 signals a hard time limit twice) is recorded once."""
    job = services.job_create(kind="x", team=team_a)
    services.job_claim(job_id=job.pk, worker="w")
    assert services.job_fail(job_id=job.pk, error="first") is True
    assert services.job_fail(job_id=job.pk, error="second") is False
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "first")


def test_a_cancelled_job_stops_at_its_next_progress_report(team_a):
    job = services.job_create(kind="x", team=team_a)
    services.job_claim(job_id=job.pk, worker="w")
    services.job_cancel(job=job)
    with pytest.raises(JobCancelled):
        services.job_progress(job_id=job.pk, done=1)


def test_an_unknown_job_kind_is_refused_with_the_known_ones(team_a):
    with pytest.raises(ValueError, match="unknown job kind 'nope'.*diagnostics.probe_cpu"):
        services.job_start(kind="nope", team=team_a)


def test_every_job_kind_has_a_registered_task():
    for kind in JOB_QUEUES:
        assert registered_task(job_task_name(kind)).name == f"parsimony.{kind}"


def test_jobs_are_sent_by_task_name_to_their_queue_when_a_broker_is_set(
    team_a, settings, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    settings.CELERY_BROKER_URL = "redis://broker.invalid:6379/0"
    monkeypatch.setattr(celery_app(), "send_task", lambda name, **options: sent.append((name, options)))
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_start(kind="corpora.rebuild_index", team=team_a, params={"corpus_id": 1})
    assert sent == [("parsimony.corpora.rebuild_index", {"args": (job.pk,), "queue": "gpu"})]
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_the_core_app_imports_no_task_module():
    import subprocess
    import sys

    code = (
        "import django, sys; django.setup(); import apps.core.services, apps.core.dispatch;"
        "sys.exit(any(m.startswith('workers') for m in sys.modules))"
    )
    env = {**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "apps.config.settings"}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
