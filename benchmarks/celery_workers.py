"""Real Celery processes for a benchmark: one worker for every queue of `workers.queues.Queue`, started as
the Makefile's `worker-<queue>` target starts it, and one `celery beat`; stopped with a warm shutdown.

The caller sets the environment first (DATABASE_URL, CELERY_BROKER_URL, DATA_ROOT or PARSIMONY_VAR_DIR):
the processes inherit it. Importable without locust (its gevent patches) or Django.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_MAKE_WORKER = re.compile(r"^worker-(?P<queue>[\w-]+):.*\n\t\$\(VENV\)/bin/celery -A workers (?P<args>worker .+)$",
                          re.MULTILINE)


def worker_arguments() -> dict[str, list[str]]:
    """The celery arguments of each queue's worker, as the Makefile's `worker-<queue>` target has them
    (a queue without a target gets a plain `worker -Q <queue>`), for every queue of workers.queues.Queue."""
    from workers.queues import Queue

    targets = {m["queue"]: m["args"].split() for m in _MAKE_WORKER.finditer((ROOT / "Makefile").read_text())}
    return {queue.value: targets.get(queue.value, ["worker", "-Q", queue.value, "--loglevel", "INFO"])
            for queue in Queue}


def broker_purge(url: str) -> None:
    """Empty the broker's queues and the unacknowledged messages an earlier run left (kombu's Redis keys)."""
    import redis

    from workers.queues import Queue

    redis.Redis.from_url(url).delete(*[q.value for q in Queue], "unacked", "unacked_index", "unacked_mutex")


class CeleryProcesses:
    """A worker per queue and one beat, each in its own session, logging to its own file under ``var``."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.started: list[tuple[str, list[str], subprocess.Popen, Path]] = []

    def start(self) -> None:
        for queue, args in worker_arguments().items():
            # A node name per queue: several workers on one host must not share the default one.
            self._start(f"worker-{queue}", [*args, "-n", f"{queue}@%h"])
        self._start("beat", ["beat", "-s", str(self.var / "beat-schedule"), "--loglevel", "INFO"])

    def _start(self, name: str, args: list[str]) -> None:
        log = self.var / f"{name}.log"
        # `python -m celery` from the repository root, not the venv's `celery` script: the root comes first on
        # sys.path, so a worktree's own code runs even where the editable install points at another checkout.
        command = [sys.executable, "-m", "celery", "-A", "workers", *args]
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), start_new_session=True,
                                       stdout=out, stderr=subprocess.STDOUT)
        self.started.append((name, command, process, log))

    def wait_ready(self, timeout_s: float) -> None:
        """Until every worker logged "ready." and beat its start (RuntimeError on a timeout or an exit)."""
        deadline = time.monotonic() + timeout_s
        for name, _, process, log in self.started:
            marker = "beat: Starting" if name == "beat" else " ready."
            while marker not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.5)

    def stop(self, timeout_s: float = 60.0) -> list[dict]:
        """TERM each (a warm shutdown: a worker finishes its task first), KILL what is left after ``timeout_s``.
        -> how each one ended."""
        started = time.monotonic()
        for _, _, process, _ in self.started:
            if process.poll() is None:
                process.terminate()
        ended = []
        for name, command, process, log in self.started:
            try:
                rc = process.wait(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
                clean = rc == 0
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                rc, clean = process.wait(), False
            with_children = _session_alive(process.pid)
            if with_children:  # a prefork child outliving its parent
                os.killpg(process.pid, signal.SIGKILL)
            ended.append({"name": name, "command": " ".join(["celery", *command[3:]]), "rc": rc,
                          "stopped_cleanly": clean and not with_children,
                          "stop_s": round(time.monotonic() - started, 1), "log": str(log)})
        return ended


def _session_alive(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True
