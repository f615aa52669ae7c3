"""Queues by kind of work (docs/reliability.md, "Fairness and queues"): each job is sent to the queue its
work needs, the Job row keeps it, and every later send of the job (a redelivery) goes there too."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.core import dispatch, services
from apps.core.jobs import JOB_QUEUE_CHOICES, JOB_QUEUES, model_work_queue
from apps.core.models import Job, JobStatus
from apps.costs.models import ModelEndpoint
from apps.costs.services import price_set
from apps.rag.models import Pipeline
from apps.rag.selectors import query_queue
from apps.rag.services import query_run_start
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import route_task

pytestmark = pytest.mark.django_db


class _Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple, str]] = []

    def send_task(self, name: str, *, args: tuple, queue: str) -> None:
        self.messages.append((name, args, queue))


@pytest.fixture
def sent(settings, monkeypatch) -> _Sent:
    """A broker is configured; what would go to it is recorded (name, args, queue)."""
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/99"
    recorder = _Sent()
    monkeypatch.setattr(dispatch, "celery_app", lambda: recorder)
    return recorder


@pytest.fixture
def remote(db) -> ModelEndpoint:
    price_set(model_name="test/remote", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))
    return ModelEndpoint.objects.create(
        name="remote-gpt", kind="openai", base_url="http://remote.invalid/v1", remote_model="gpt-4o-mini",
        price_name="test/remote", max_output_tokens=64,
    )


def test_the_celery_app_declares_the_cpu_gpu_and_io_queues():
    assert sorted(q.name for q in app.conf.task_queues) == ["cpu", "gpu", "io"]
    assert {str(q) for q in Queue} == {"cpu", "gpu", "io"}


def test_every_kind_runs_on_a_declared_queue_and_its_choices_start_with_its_default():
    assert set(JOB_QUEUES.values()) <= {"cpu", "gpu", "io"}
    for kind, choices in JOB_QUEUE_CHOICES.items():
        assert choices[0] == JOB_QUEUES[kind], kind
        assert set(choices) <= {"cpu", "gpu", "io"}


def test_tasks_are_routed_to_their_kinds_queue_and_bookkeeping_to_cpu():
    import workers.tasks.costs  # noqa: F401  (each registers its routes)
    import workers.tasks.ingestion  # noqa: F401
    import workers.tasks.jobs  # noqa: F401
    import workers.tasks.rag  # noqa: F401

    assert route_task("parsimony.rag.query", (), {}, {}) == {"queue": "gpu"}
    assert route_task("parsimony.corpora.ingest", (), {}, {}) == {"queue": JOB_QUEUES["corpora.ingest"]}
    assert route_task("core.reap_jobs", (), {}, {}) == {"queue": "cpu"}
    assert route_task("costs.expire_reservations", (), {}, {}) == {"queue": "cpu"}


def test_model_work_on_a_remote_endpoint_goes_to_io_and_local_model_work_to_gpu(team_a, remote):
    local = ModelEndpoint.objects.filter(kind="local").first()
    assert model_work_queue(remote=True) == "io"
    assert model_work_queue(remote=False) == "gpu"
    assert model_work_queue(remote=True, local_model_work=True) == "gpu"
    assert query_queue(endpoint=remote) == "io"
    assert query_queue(endpoint=local) == "gpu"
    plain = Pipeline.objects.create(team=team_a, name="plain", model_endpoint=remote, retriever="none")
    scored = Pipeline.objects.create(
        team=team_a, name="scored", model_endpoint=remote, retriever="none", compression_method="surprisal_prune"
    )
    fixed = Pipeline.objects.create(team=team_a, name="fixed", model_endpoint=remote, fixed_context="A long text.")
    assert query_queue(endpoint=remote, pipeline=plain) == "io"
    assert query_queue(endpoint=remote, pipeline=scored) == "gpu"  # a local scorer
    assert query_queue(endpoint=remote, pipeline=fixed) == "gpu"  # a KV cache


def test_a_chat_on_a_remote_endpoint_is_sent_to_io_and_its_row_keeps_the_queue(
    team_a, alice, remote, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        run = query_run_start(team=team_a, endpoint=remote, messages=[{"role": "user", "content": "Hi"}], user=alice)
    job = Job.objects.get(pk=run.job_id)
    assert job.queue == "io"
    assert sent.messages == [("parsimony.rag.query", (job.pk,), "io")]


def test_a_job_start_refuses_a_queue_its_kind_does_not_run_on(team_a):
    with pytest.raises(ValueError, match="runs on gpu, io, not 'cpu'"):
        services.job_start(kind="rag.query", team=team_a, queue="cpu")


def test_a_redelivered_job_goes_back_to_the_queue_its_row_names(
    team_a, sent, settings, django_capture_on_commit_callbacks
):
    job = services.job_create(kind="diagnostics.probe_gpu", team=team_a, queue="io")
    stale = timezone.now() - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S + 5)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempts=1, heartbeat_at=stale)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.jobs_reap()["redelivered"] == 1
    assert sent.messages == [("parsimony.diagnostics.probe_gpu", (job.pk,), "io")]


def test_a_message_from_a_queue_the_job_is_not_on_does_not_claim_it(team_a):
    job = services.job_create(kind="rag.query", team=team_a, queue="io")
    assert not services.job_claim(job_id=job.pk, worker="w:1", queue="gpu")
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert services.job_claim(job_id=job.pk, worker="w:1", queue="io")


def test_every_queue_has_a_worker_probe(team_a, alice, client, django_capture_on_commit_callbacks):
    from apps.core.jobs import JOB_REDELIVERABLE

    assert {JOB_QUEUES[f"diagnostics.probe_{queue}"] for queue in ("cpu", "gpu", "io")} == {"cpu", "gpu", "io"}
    assert "diagnostics.probe_io" in JOB_REDELIVERABLE
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/jobs/probe/", {"queue": "io"})
    assert response.status_code == 302
    job = Job.objects.get(kind="diagnostics.probe_io")
    assert (job.queue, job.status, job.team_id) == ("io", JobStatus.SUCCEEDED, team_a.pk)
