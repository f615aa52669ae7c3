"""A real Celery worker process on Redis runs a job; progress and success land in the database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from apps.core.models import Job, JobStatus
from apps.core.services import job_start

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_broker():
    import redis

    url = _broker_url()
    if not url.startswith("redis"):
        pytest.skip("the integration tests use a Redis broker")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {url}: {exc}")
    for queue in ("cpu", "gpu"):
        client.delete(queue)
    return url


def _database_url_for_worker() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        return f"postgresql://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{Path(db['NAME']).resolve()}"


@pytest.fixture
def celery_worker_process(redis_broker, tmp_path, settings):
    env = {
        **os.environ,
        "DATABASE_URL": _database_url_for_worker(),
        "CELERY_BROKER_URL": redis_broker,
        "DATA_ROOT": str(tmp_path),
        "PARSIMONY_VAR_DIR": str(tmp_path),
        "SECRET_KEY": "integration-test-secret",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "cpu,gpu", "--pool", "solo",
         "--concurrency", "1", "-n", "integration@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    from workers.celery import app

    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = redis_broker
    app.conf.broker_url = redis_broker
    yield worker
    app.conf.broker_url = previous
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
    log.close()


def _wait_for(predicate, *, timeout: float, worker, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker.poll() is not None:
            pytest.fail(f"the worker exited with {worker.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out; worker log:\n{log.read_text()[-4000:]}")


def test_a_real_worker_runs_a_job_and_reports_progress(celery_worker_process, team_a, tmp_path):
    job = job_start(kind="diagnostics.probe_gpu", team=team_a, params={"sleep_s": 3})
    log = tmp_path / "worker.log"

    seen_running = _wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, progress_done__gte=3).first(),
        timeout=120, worker=celery_worker_process, log=log,
    )
    assert seen_running.progress_total == 4
    assert seen_running.message == "waiting on an optional delay"

    done = _wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=JobStatus.SUCCEEDED).first(),
        timeout=60, worker=celery_worker_process, log=log,
    )
    assert (done.progress_done, done.progress_total) == (4, 4)
    assert done.result["pid"] == celery_worker_process.pid != os.getpid()
    assert done.result["database_vendor"] == connection.vendor
    assert done.result["device"] in {"cpu", "cuda"}
    assert done.attempts == 1
