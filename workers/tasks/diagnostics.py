"""A worker probe: proves a worker on a queue can reach the database, DATA_ROOT and its device."""

from __future__ import annotations

import os
import socket
import tempfile
import time

from django.conf import settings
from django.db import connection

from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


def _probe(job: Job, progress: Progress) -> dict:
    steps = 4
    result: dict = {"host": socket.gethostname(), "pid": os.getpid()}

    progress(0, steps, "checking the database")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    result["database_ms"] = round(1000 * (time.perf_counter() - started), 2)
    result["database_vendor"] = connection.vendor

    progress(1, steps, "checking DATA_ROOT is writable")
    with tempfile.NamedTemporaryFile(dir=settings.DATA_ROOT, prefix=".probe-", delete=True) as handle:
        handle.write(b"ok")
    result["data_root"] = str(settings.DATA_ROOT)

    progress(2, steps, "checking the compute device")
    # Only the worker pays for torch; the web process never imports it.
    import torch

    result["torch"] = torch.__version__
    result["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    result["torch_threads"] = torch.get_num_threads()

    progress(3, steps, "waiting on an optional delay")
    time.sleep(float(job.params.get("sleep_s", 0)))
    progress(4, steps, "done")
    return result


@job_task(kind="diagnostics.probe_cpu", queue=Queue.CPU, soft_time_limit=120, time_limit=180)
def probe_cpu(job: Job, progress: Progress) -> dict:
    """Probe a `cpu` queue worker."""
    return _probe(job, progress)


@job_task(kind="diagnostics.probe_gpu", queue=Queue.GPU, soft_time_limit=120, time_limit=180)
def probe_gpu(job: Job, progress: Progress) -> dict:
    """Probe a `gpu` queue worker (reports whether CUDA is visible)."""
    return _probe(job, progress)


@job_task(kind="diagnostics.probe_io", queue=Queue.IO, soft_time_limit=120, time_limit=180)
def probe_io(job: Job, progress: Progress) -> dict:
    """Probe an `io` queue worker (the threads pool that calls remote model endpoints)."""
    return _probe(job, progress)


# The limits of the time-limit probe: short, so checking a worker costs seconds.
LIMIT_PROBE_SOFT_S = 1
LIMIT_PROBE_HARD_S = 2


@job_task(kind="diagnostics.time_limit_gpu", queue=Queue.GPU, soft_time_limit=LIMIT_PROBE_SOFT_S,
          time_limit=LIMIT_PROBE_HARD_S)
def time_limit_gpu(job: Job, progress: Progress) -> dict:
    """Check that the `gpu` worker's pool enforces task time limits: block for `block_s` (default 10) as
    a long model forward does (deaf to the soft limit's signal, SIGUSR1, until it returns). A pool that
    enforces limits (prefork) kills the process at the hard limit and the job fails with "hard time
    limit exceeded" (``workers.tasks.limits``); a pool that does not (solo) lets it succeed."""
    import signal

    block_s = min(float(job.params.get("block_s", 10)), 60.0)
    progress(0, 1, f"blocking for {block_s:g} s (soft limit {LIMIT_PROBE_SOFT_S} s, hard {LIMIT_PROBE_HARD_S} s)")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        time.sleep(block_s)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    return {"blocked_s": block_s, "time_limits_enforced": False, "pid": os.getpid()}
