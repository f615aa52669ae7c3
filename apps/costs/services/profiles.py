"""Worker profiles: each worker's measured speed per model, written by the worker, read by the cost model.

A worker advertises itself when it starts (``workers.tasks.profiles`` calibrates the local models
its queues serve and calls ``profile_write``); an in-process (embedded) deployment calibrates
lazily on a model's first use (``profile_ensure``). ``profiles_heartbeat`` keeps ``last_seen``
fresh; ``profile_refit`` re-derives a profile from the worker's own recent ledger rows so the
model tracks reality (a high percentile of observed / predicted seconds, never a mean).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.costs.models import ProfileSource, Stage, UsageRecord, WorkerProfile
from apps.costs.worker_identity import (
    local_speed_set,
    local_speeds_forget,
    worker_identity_set,
    worker_name,
    worker_queues,
)

logger = logging.getLogger(__name__)

# A refit profile predicts the median of its worker's rows: the cost model says what a call typically
# takes (savings estimates use that), and reservations add SAFETY_FACTOR on top of it. (A high
# percentile here would count the margin twice and inflate every claimed baseline.)
REFIT_PERCENTILE = 0.5
# The rows that measure each kind of profile: a generator's calls, an embedder's encodes. Other
# stages billed to the same model (compression's embedding and summary seconds, a KV prefill with
# its index build) are not one call of prompt in, tokens out, and would skew the fit.
_GENERATION_STAGES = (Stage.GENERATE, Stage.AGENT_STEP)
_EMBEDDING_STAGES = (Stage.EMBED, Stage.RETRIEVE)
REFIT_MIN_ROWS = 5
# A refit reads the worker's most recent this many calls (a rolling window: the profile follows a
# machine that gets busier or faster within minutes, and one odd call moves its median little).
REFIT_WINDOW_ROWS = 40
# A refit after every this many metered calls in a process (the beat task refits all of them too).
REFIT_EVERY_CALLS = 10
# Heartbeats from calls are written at most this often per process.
_HEARTBEAT_EVERY_S = 30.0

_calibrated: dict[str, WorkerProfile] = {}  # model_name -> this process's profile
_lock = threading.Lock()
_last_heartbeat = 0.0
_calls_since_refit: dict[str, int] = {}


def worker_device() -> str:
    """PARSIMONY_WORKER_DEVICE when set explicitly, else what torch sees (cuda when a GPU is visible)."""
    from workers.runtime.calibration import detect_device

    return detect_device(getattr(settings, "PARSIMONY_WORKER_DEVICE", "") or None)


def local_profile(model_name: str) -> WorkerProfile | None:
    """This process's own profile for ``model_name`` (None before it calibrated that model)."""
    return _calibrated.get(model_name)


def profile_write(
    *,
    model_name: str,
    device: str,
    prefill_tps: float,
    decode_tps: float,
    overhead_s: float,
    source: str = ProfileSource.MEASURED,
    samples: int = 0,
    hostname: str | None = None,
    queues: list[str] | None = None,
) -> WorkerProfile:
    """Create or replace the profile of (worker, model); it is live from now."""
    from apps.costs import cost_model

    now = timezone.now()
    defaults = {
        "queues": ",".join(queues or worker_queues()),
        "device": device,
        "prefill_tps": float(prefill_tps),
        "decode_tps": float(decode_tps),
        "overhead_s": float(overhead_s),
        "source": source,
        "samples": samples,
        "measured_at": now,
        "last_seen": now,
    }
    if source == ProfileSource.MEASURED:
        defaults["calibrated_at"] = now  # a refit keeps the start-up measurement's time
    profile, _ = WorkerProfile.objects.update_or_create(
        hostname=hostname or worker_name(), model_name=model_name, defaults=defaults
    )
    if profile.hostname == worker_name():
        _calibrated[model_name] = profile
        local_speed_set(
            model=model_name, device=device, prefill_tps=profile.prefill_tps, decode_tps=profile.decode_tps,
            overhead_s=profile.overhead_s,
        )
    cost_model.throughput_cache_clear()
    return profile


def profile_calibrate(*, model_name: str, target: Any) -> WorkerProfile:
    """Measure ``target`` (a LoadedModel or an Embedder) here and write this worker's profile for it."""
    from workers.runtime.calibration import calibrate_causal_lm, calibrate_embedder
    from workers.runtime.embedders import Embedder

    measured = calibrate_embedder(target) if isinstance(target, Embedder) else calibrate_causal_lm(target)
    logger.info(
        "calibrated %s on %s: prefill %.0f tok/s, decode %.1f tok/s, overhead %.3f s (%.1f s)",
        model_name,
        measured.device,
        measured.prefill_tps,
        measured.decode_tps,
        measured.overhead_s,
        measured.took_s,
    )
    return profile_write(
        model_name=model_name,
        device=measured.device,
        prefill_tps=measured.prefill_tps,
        decode_tps=measured.decode_tps,
        overhead_s=measured.overhead_s,
    )


def profile_ensure(*, model_name: str, target: Any) -> WorkerProfile:
    """This process's profile for ``model_name``, calibrating ``target`` on first use (embedded mode)."""
    profile = _calibrated.get(model_name)
    if profile is not None:
        profiles_heartbeat()
        return profile
    with _lock:
        profile = _calibrated.get(model_name)
        if profile is None:
            profile = profile_calibrate(model_name=model_name, target=target)
    return profile


def profiles_heartbeat(*, force: bool = False) -> int:
    """Mark this worker's profiles as seen now (at most every 30 s unless ``force``) -> rows touched."""
    global _last_heartbeat
    if not force and time.monotonic() - _last_heartbeat < _HEARTBEAT_EVERY_S:
        return 0
    _last_heartbeat = time.monotonic()
    return WorkerProfile.objects.filter(hostname=worker_name()).update(last_seen=timezone.now())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _row_seconds(row: UsageRecord) -> float:
    return float(row.gpu_seconds) + float(row.cpu_seconds)


def profile_refit(*, profile: WorkerProfile, window: timedelta = timedelta(days=1)) -> WorkerProfile | None:
    """Rescale ``profile`` so it predicts the median (REFIT_PERCENTILE) of its worker's recent calls.

    Each of the worker's last REFIT_WINDOW_ROWS calls since it calibrated (at most ``window`` back)
    has its device seconds compared with the profile's prediction for its tokens; the throughputs
    are divided (and the overhead multiplied) by that percentile of the ratios, so repeated refits
    are a rolling median. Rows the hold cut short (finish_reason "budget") are clamped, and rows
    that reused cached KV (superposition paths, a fixed context) did other work than a plain call
    of their tokens: both are left out. None when there are too few rows to say.
    """
    since = profile.calibrated_at or profile.measured_at
    rows = list(
        UsageRecord.objects.filter(
            worker=profile.hostname,
            model_name=profile.model_name,
            device=profile.device,
            # Only calls since the worker measured the model: a restarted worker (maybe on other
            # hardware) starts from its own start-up measurement, not from its past.
            created_at__gte=max(timezone.now() - window, since),
            stage__in=_GENERATION_STAGES if profile.decode_tps > 0 else _EMBEDDING_STAGES,
            cached_tokens=0,
        )
        .exclude(finish_reason="budget")
        .order_by("-created_at")[:REFIT_WINDOW_ROWS]
    )
    ratios = []
    for row in rows:
        seconds = _row_seconds(row)
        tokens_in = row.prompt_tokens - row.cached_tokens
        predicted = profile.overhead_s + tokens_in / profile.prefill_tps
        if profile.decode_tps > 0:
            predicted += row.completion_tokens / profile.decode_tps
        if seconds > 0 and predicted > 0:
            ratios.append(seconds / predicted)
    if len(ratios) < REFIT_MIN_ROWS:
        return None
    scale = _percentile(ratios, REFIT_PERCENTILE)
    return profile_write(
        hostname=profile.hostname,
        queues=profile.queue_list,
        model_name=profile.model_name,
        device=profile.device,
        prefill_tps=profile.prefill_tps / scale,
        decode_tps=profile.decode_tps / scale,
        overhead_s=profile.overhead_s * scale,
        source=ProfileSource.LEDGER,
        samples=len(ratios),
    )


def profiles_refit(*, live_within_s: float | None = None) -> int:
    """Refit every live profile from its worker's ledger rows (the beat task) -> how many changed."""
    ttl = live_within_s if live_within_s is not None else settings.PARSIMONY_WORKER_PROFILE_TTL_S
    live = WorkerProfile.objects.filter(last_seen__gte=timezone.now() - timedelta(seconds=ttl))
    return sum(1 for profile in live if profile_refit(profile=profile) is not None)


def profile_after_call(*, model_name: str) -> None:
    """Cheap bookkeeping after a metered call here: heartbeat, and every REFIT_EVERY_CALLS calls a refit."""
    profiles_heartbeat()
    count = _calls_since_refit.get(model_name, 0) + 1
    _calls_since_refit[model_name] = count
    profile = _calibrated.get(model_name)
    if profile is not None and count >= REFIT_EVERY_CALLS:
        _calls_since_refit[model_name] = 0
        refit = profile_refit(profile=profile)
        if refit is not None:
            _calibrated[model_name] = refit


def profiles_forget_local() -> None:
    """Forget this process's calibrations (tests; a worker after its models changed)."""
    _calibrated.clear()
    _calls_since_refit.clear()
    local_speeds_forget()


def worker_profiles_advertise(
    *, hostname: str, queues: list[str], targets: list[tuple[str, Callable[[], Any]]]
) -> list[WorkerProfile]:
    """A starting worker: remember who it is, calibrate each (price name, loader) it serves, write the profiles."""
    worker_identity_set(hostname=hostname, queues=queues)
    written = []
    for model_name, load in targets:
        try:
            written.append(profile_calibrate(model_name=model_name, target=load()))
        except Exception:  # a model that cannot load must not keep the worker from starting
            logger.exception("could not calibrate %s; reservations use the documented default", model_name)
    return written


def usage_row_origin(*, gpu_seconds: float, cpu_seconds: float) -> tuple[str, str]:
    """(device, worker) to write on a ledger row: who ran its device time ('' for token-priced rows)."""
    if gpu_seconds:
        return "cuda", worker_name()
    if cpu_seconds:
        return "cpu", worker_name()
    return "", ""


__all__ = [
    "REFIT_PERCENTILE",
    "local_profile",
    "profile_after_call",
    "profile_calibrate",
    "profile_ensure",
    "profile_refit",
    "profile_write",
    "profiles_forget_local",
    "profiles_heartbeat",
    "profiles_refit",
    "usage_row_origin",
    "worker_device",
    "worker_identity_set",
    "worker_name",
    "worker_profiles_advertise",
    "worker_queues",
]
