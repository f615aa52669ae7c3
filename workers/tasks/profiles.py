"""Workers advertise their speed: calibrate on start, heartbeat while alive, refit from the ledger under beat.

When a Celery worker starts it detects its device (PARSIMONY_WORKER_DEVICE, else torch), measures
the local models its queues serve (the enabled local model endpoints and the embedding model,
on the `gpu` queue) and writes one profile per model (apps.costs.services.profiles). With the
prefork pool each child measures itself after the fork (CUDA cannot cross a fork); with a solo
or threads pool the worker does when ready. A daemon thread keeps the profiles' last_seen fresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_ready
from django.conf import settings
from django.db import close_old_connections

from apps.costs.defaults import LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.services.profiles import (
    profiles_heartbeat,
    profiles_refit,
    worker_device,
    worker_identity_set,
    worker_profiles_advertise,
    worker_queues,
)
from workers.celery import app
from workers.queues import Queue
from workers.tasks.base import TASK_QUEUES

logger = logging.getLogger(__name__)

TASK_QUEUES["costs.refit_worker_profiles"] = Queue.CPU.value
HEARTBEAT_EVERY_S = 60.0

_start: dict[str, Any] = {}


@app.task(name="costs.refit_worker_profiles", ignore_result=True, soft_time_limit=50, time_limit=60)
def refit_worker_profiles() -> int:
    """Refit every live worker profile from its own recent ledger rows (the cost model tracks reality)."""
    return profiles_refit()


def _model_targets(device: str) -> list[tuple[str, Callable[[], Any]]]:
    """(price name, loader) of each local model this worker's queues serve."""
    if Queue.GPU.value not in worker_queues():
        return []
    from apps.costs.models import EndpointKind, ModelEndpoint
    from workers.runtime.embedders import get_embedder
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(settings.PARSIMONY_TORCH_THREADS)
    targets: dict[str, Callable[[], Any]] = {}
    for endpoint in ModelEndpoint.objects.filter(kind=EndpointKind.LOCAL, enabled=True).order_by("team_id", "pk"):
        source = endpoint.source or "smollm2-135m-instruct"
        targets.setdefault(endpoint.price_name, _loader(load_causal_lm, source, device))
    embedding_model = settings.PARSIMONY_DEFAULT_EMBEDDING_MODEL
    targets.setdefault(
        LOCAL_EMBEDDING_PRICE_NAME, lambda: get_embedder(embedding_model, threads=settings.PARSIMONY_TORCH_THREADS)
    )
    return list(targets.items())


def _loader(load: Callable[..., Any], source: str, device: str) -> Callable[[], Any]:
    return lambda: load(source, cache_dir=settings.DATA_ROOT, device=device)


def _heartbeat_forever() -> None:
    stop = threading.Event()
    while not stop.wait(HEARTBEAT_EVERY_S):
        try:
            close_old_connections()
            profiles_heartbeat(force=True)
        except Exception:  # a database blip must not kill the thread; the next beat retries
            logger.exception("worker profile heartbeat failed")


def advertise() -> None:
    """Calibrate this process's models, write its profiles, start its heartbeat (once per process)."""
    if _start.get("advertised") or "hostname" not in _start:
        return
    _start["advertised"] = True
    device = worker_device()
    worker_profiles_advertise(hostname=_start["hostname"], queues=_start["queues"], targets=_model_targets(device))
    threading.Thread(target=_heartbeat_forever, name="parsimony-profile-heartbeat", daemon=True).start()


def _queues_from(options: dict[str, Any]) -> list[str]:
    raw = options.get("queues") or [Queue.CPU.value]
    names = raw.split(",") if isinstance(raw, str) else list(raw)
    return [str(getattr(q, "name", q)).strip() for q in names if str(q).strip()]


@celeryd_init.connect
def _on_worker_init(sender: str | None = None, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
    options = options or {}
    _start.update(hostname=str(sender), queues=_queues_from(options), pool=str(options.get("pool_cls", "")))
    worker_identity_set(hostname=_start["hostname"], queues=_start["queues"])


@worker_process_init.connect
def _on_child_start(**kwargs: Any) -> None:
    advertise()  # a prefork child, after the fork


@worker_ready.connect
def _on_worker_ready(**kwargs: Any) -> None:
    if any(kind in _start.get("pool", "") for kind in ("solo", "threads")):
        advertise()  # no children: the worker itself runs the tasks
