"""Real Celery workers on Redis for the integration tests: the broker, worker processes, waiting on rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def _broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_broker(settings) -> Iterator[str]:
    """An empty Redis broker that this process sends jobs to (CELERY_BROKER_URL, else db 15)."""
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
    # The queues, and the messages a killed worker left unacknowledged (kombu's Redis transport keys).
    client.delete("cpu", "gpu", "io", "unacked", "unacked_index", "unacked_mutex")
    from workers.celery import app

    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = url
    app.conf.broker_url = url
    yield url
    app.conf.broker_url = previous


def _database_url_for_worker() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        return f"postgresql://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{Path(db['NAME']).resolve()}"


class Processes:
    """Celery processes started by a test (workers, beat), each logging to its own file; all stopped at the end."""

    def __init__(self, broker: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DATABASE_URL": _database_url_for_worker(),
            "CELERY_BROKER_URL": broker,
            "DATA_ROOT": str(tmp_path),
            "PARSIMONY_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "integration-test-secret",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: str, log_name: str) -> subprocess.Popen:
        log = self.tmp_path / log_name
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", *args, "--loglevel", "INFO"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.started.append((process, log))
        return process

    def worker(self, name: str, queues: str = "cpu,gpu") -> subprocess.Popen:
        """A worker on ``queues``, one task at a time (the gpu worker's shape)."""
        return self.start(
            "worker", "-Q", queues, "--pool", "solo", "--concurrency", "1", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", log_name=f"{name}.log",
        )

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.started if log.exists())

    def stop_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def celery_processes(redis_broker, tmp_path, settings) -> Iterator[Callable[..., Processes]]:
    """``celery_processes(**env)``: a Processes with that extra environment, stopped after the test. They
    share this process's database and DATA_ROOT (uploads stored here are read there)."""
    settings.DATA_ROOT = tmp_path
    made: list[Processes] = []

    def make(**env: str) -> Processes:
        made.append(Processes(redis_broker, tmp_path, env))
        return made[-1]

    yield make
    for processes in made:
        processes.stop_all()


def wait_for(predicate: Callable[[], Any], *, timeout: float, processes: Processes, alive=()) -> Any:
    """Poll ``predicate`` until it returns something true; fail with the processes' logs on a timeout, or
    as soon as one of the ``alive`` processes exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for process in alive:
            if process.poll() is not None:
                pytest.fail(f"a process exited with {process.returncode}:\n{processes.logs()}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s; logs:\n{processes.logs()}")
