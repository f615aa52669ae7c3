"""Who this process is as a worker: the name on its profiles and ledger rows, and the queues it serves.

Set by the Celery worker's start signal (workers.tasks.profiles); an in-process (embedded)
deployment is ``host:pid`` serving every queue. Kept apart from the services so the cost model
can read it without importing them.
"""

from __future__ import annotations

import os
import socket
from typing import Any

_identity: dict[str, Any] = {}
# model (price name) -> (device, prefill_tps, decode_tps, overhead_s) this process measured itself:
# live by definition while the process runs (an in-process deployment runs its own work).
_local_speeds: dict[str, tuple[str, float, float, float]] = {}


def worker_identity_set(*, hostname: str, queues: list[str]) -> None:
    """This process is the worker ``hostname`` consuming ``queues``."""
    _identity.update(hostname=hostname, queues=sorted(set(queues)))


def is_worker() -> bool:
    """Whether this process is a Celery worker (its start set its identity)."""
    return bool(_identity.get("hostname"))


def worker_name() -> str:
    """The name this process writes on its profiles and ledger rows (host:pid when not a Celery worker)."""
    return _identity.get("hostname") or f"{socket.gethostname()}:{os.getpid()}"


def worker_queues() -> list[str]:
    """The queues this process serves: the worker's, or every queue for an in-process deployment."""
    from workers.queues import Queue

    return _identity.get("queues") or sorted(q.value for q in Queue)


def local_speed_set(*, model: str, device: str, prefill_tps: float, decode_tps: float, overhead_s: float) -> None:
    _local_speeds[model] = (device, prefill_tps, decode_tps, overhead_s)


def local_speed(model: str) -> tuple[str, float, float, float] | None:
    """What this process measured for ``model`` (None before it calibrated it)."""
    return _local_speeds.get(model)


def local_speeds_forget() -> None:
    _local_speeds.clear()
