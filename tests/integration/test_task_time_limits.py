"""The gpu worker's pool enforces task time limits: a task deaf to its soft limit (as a long model forward
is) is killed at its hard limit, its job fails naming the limit, and the worker goes on with the next job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.core.models import Job, JobStatus
from apps.core.services import job_start
from tests.integration.conftest import _database_url_for_worker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

def _wait_for(predicate, *, timeout: float, worker, log: Path):
    """Poll ``predicate`` until it returns something true; fail with the worker's log if it exits or on a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker.poll() is not None:
            pytest.fail(f"the worker exited with {worker.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out; worker log:\n{log.read_text()[-4000:]}")


# The gpu worker's pool as the Makefile, docker/ and the docs start it (tests/config/test_worker_pool.py).
GPU_POOL = ["--pool", "prefork", "--concurrency", "1"]


@pytest.fixture
def gpu_worker(tmp_path, settings):
    import redis

    url = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {url}: {exc}")
    client.delete("gpu")
    from apps.costs.models import ModelEndpoint

    # A starting child calibrates the local models it serves (workers.tasks.profiles): none here but the
    # embedder, so the test costs seconds.
    ModelEndpoint.objects.update(enabled=False)
    env = {
        **os.environ, "DATABASE_URL": _database_url_for_worker(), "CELERY_BROKER_URL": url,
        "DATA_ROOT": str(tmp_path), "PARSIMONY_VAR_DIR": str(tmp_path), "SECRET_KEY": "integration-test-secret",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "gpu", *GPU_POOL,
             "-n", "limits@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    from workers.celery import app

    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    app.conf.broker_url = url
    yield worker, log
    app.conf.broker_url = previous
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()


def test_a_task_past_its_hard_limit_is_killed_and_its_job_fails_and_the_worker_goes_on(gpu_worker, team_a):
    worker, log = gpu_worker
    job = job_start(kind="diagnostics.time_limit_gpu", team=team_a, params={"block_s": 30})
    running = _wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).first(),
                        timeout=180, worker=worker, log=log)
    started = time.monotonic()
    failed = _wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).first(),
                       timeout=30, worker=worker, log=log)
    # Killed at the 2 s hard limit (counted from when the child took the task), not after its 30 s.
    assert time.monotonic() - started < 10
    assert (failed.finished_at - running.started_at).total_seconds() < 10
    assert "hard time limit exceeded (2" in failed.error
    # Celery's pool reports the failure (the job is failed by then) before its timeout handler logs the
    # limit, so the log line may trail the job's state by a moment.
    assert _wait_for(lambda: "Hard time limit (2" in log.read_text(), timeout=10, worker=worker, log=log)

    # A fresh child (it loads its models first) runs the next job.
    probe = job_start(kind="diagnostics.probe_gpu", team=team_a, params={})
    done = _wait_for(lambda: Job.objects.filter(pk=probe.pk, status=JobStatus.SUCCEEDED).first(),
                     timeout=180, worker=worker, log=log)
    assert done.result["pid"] != worker.pid  # a prefork child ran it
