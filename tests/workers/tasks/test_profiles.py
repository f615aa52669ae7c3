"""A starting Celery worker advertises itself: its name and queues from the start signal, then its profiles."""

from __future__ import annotations

import pytest

from apps.costs import worker_identity
from apps.costs.models import WorkerProfile
from workers.tasks import profiles

pytestmark = pytest.mark.django_db
MODEL = "local/smollm2-135m-instruct"


@pytest.fixture
def fresh_worker(monkeypatch):
    monkeypatch.setattr(worker_identity, "_identity", {})
    monkeypatch.setattr(profiles, "_start", {})
    monkeypatch.setattr(profiles.threading, "Thread", lambda **kwargs: type("T", (), {"start": lambda self: None})())


@pytest.mark.slow
def test_a_solo_worker_measures_the_models_of_its_queues_when_ready(fresh_worker, smollm2, monkeypatch):
    monkeypatch.setattr(profiles, "_model_targets", lambda device: [(MODEL, lambda: smollm2)])
    profiles._on_worker_init(sender="celery@gpu-1", options={"queues": "gpu,cpu", "pool_cls": "solo"})
    assert worker_identity.worker_name() == "celery@gpu-1"
    assert worker_identity.worker_queues() == ["cpu", "gpu"]
    profiles._on_worker_ready()
    profile = WorkerProfile.objects.get(hostname="celery@gpu-1", model_name=MODEL)
    assert profile.queue_list == ["cpu", "gpu"] and profile.device == "cpu" and profile.decode_tps > 0
    profiles._on_worker_ready()  # once per process
    assert WorkerProfile.objects.count() == 1


def test_a_prefork_parent_measures_nothing_its_children_do(fresh_worker, monkeypatch):
    calls = []
    monkeypatch.setattr(profiles, "_model_targets", lambda device: calls.append(device) or [])
    profiles._on_worker_init(sender="celery@gpu-2", options={"queues": ["gpu"], "pool_cls": "prefork"})
    profiles._on_worker_ready()
    assert calls == []
    profiles._on_child_start()
    assert len(calls) == 1


def test_a_cpu_queue_worker_has_no_local_models_to_measure(fresh_worker):
    profiles._on_worker_init(sender="celery@cpu-1", options={"queues": "cpu"})
    assert profiles._model_targets("cpu") == []
