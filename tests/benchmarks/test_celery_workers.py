"""Benchmarks with real Celery workers (load_locust --tasks celery) start one for every queue, as the Makefile does."""

from __future__ import annotations

from benchmarks import celery_workers
from workers.queues import Queue


def test_it_starts_a_worker_for_every_queue_with_the_makefiles_arguments():
    arguments = celery_workers.worker_arguments()
    assert set(arguments) == {queue.value for queue in Queue}
    makefile = (celery_workers.ROOT / "Makefile").read_text()
    for queue, args in arguments.items():
        assert args[:3] == ["worker", "-Q", queue]
        if f"\nworker-{queue}:" in makefile:  # the make target's own command line
            assert f"celery -A workers {' '.join(args)}\n" in makefile
    assert "--pool" in arguments["gpu"]  # the gpu worker's pool, as `make worker-gpu` has it


def test_a_queue_without_a_make_target_gets_a_plain_worker_on_it(monkeypatch, tmp_path):
    (tmp_path / "Makefile").write_text(
        "worker-gpu: install\n\t$(VENV)/bin/celery -A workers worker -Q gpu --pool prefork --concurrency 1\n"
    )
    monkeypatch.setattr(celery_workers, "ROOT", tmp_path)
    arguments = celery_workers.worker_arguments()
    assert arguments["gpu"] == ["worker", "-Q", "gpu", "--pool", "prefork", "--concurrency", "1"]
    assert arguments["cpu"] == ["worker", "-Q", "cpu", "--loglevel", "INFO"]
