"""The device-time cost model: how many device-seconds a piece of local work takes, and on which device.

Reservations for device-time work (local generation, prefill, embeddings, compression) are
``device_seconds_bound`` × the price of the device that will run it; savings counterfactuals use
``device_seconds_estimate`` (no safety factor, labelled an estimate). Throughputs come from the
workers' own measurements (see docs/costs.md, "The cost model"); without any, from the
documented defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apps.costs.defaults import LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.pricing import PriceLike, Usage, cost_of, to_decimal

# The multiple of the predicted seconds that a reservation holds (prediction error, noisy neighbours).
SAFETY_FACTOR = 1.5


@dataclass(frozen=True)
class Throughput:
    """A worker's measured speed for one model: tokens per second in and out, and a fixed overhead."""

    device: str  # "cpu" or "cuda"
    prefill_tps: float  # prompt tokens per second
    decode_tps: float  # generated tokens per second
    overhead_s: float  # per call (tokenizer, allocation, first-step latency)


# Used only while no live worker has measured itself. Measured with workers.runtime.calibration on
# the reference machine (2 shared CPU cores, 1 torch thread, PARSIMONY_TORCH_THREADS=1):
# SmolLM2-135M-Instruct prefill 310-360 tok/s, decode ~15 tok/s, overhead ~0.08 s; MiniLM-L6
# ~1,400 tok/s. The defaults are rounded towards slower so an unmeasured worker is not under-held.
DEFAULT_THROUGHPUT = Throughput(device="cpu", prefill_tps=300.0, decode_tps=12.0, overhead_s=0.15)
DEFAULT_THROUGHPUTS = {
    LOCAL_EMBEDDING_PRICE_NAME: Throughput(device="cpu", prefill_tps=1200.0, decode_tps=0.0, overhead_s=0.03),
}
# The call shape a worker is compared on when no tokens are given ("the slowest worker").
_REFERENCE_TOKENS = (512, 128)
_CACHE_S = 10.0
_cache: dict[tuple[str, str], tuple[float, list[Throughput]]] = {}


def throughput_cache_clear() -> None:
    """Forget the cached live profiles (a profile was written in this process)."""
    _cache.clear()


def _seconds(speed: Throughput, tokens_in: int, tokens_out: int) -> float:
    seconds = speed.overhead_s + tokens_in / max(speed.prefill_tps, 1e-9)
    if tokens_out:
        # An embedder (decode_tps 0) never generates; a generator's decode rate bounds the output.
        seconds += tokens_out / max(speed.decode_tps or speed.prefill_tps, 1e-9)
    return seconds


def _live_profiles(model: str, queue: str) -> list[Throughput]:
    """The profiles of workers seen within PARSIMONY_WORKER_PROFILE_TTL_S that serve ``queue`` and ``model``
    (and this process's own, which is live by definition), cached for a few seconds."""
    import time

    key = (model, queue)
    hit = _cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < _CACHE_S:
        return hit[1]
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from apps.costs.models import WorkerProfile
    from apps.costs.worker_identity import local_speed, worker_queues

    fresh = timezone.now() - timedelta(seconds=settings.PARSIMONY_WORKER_PROFILE_TTL_S)
    rows = WorkerProfile.objects.filter(last_seen__gte=fresh, model_name=model, queues__contains=queue)
    speeds = [
        Throughput(device=r.device, prefill_tps=r.prefill_tps, decode_tps=r.decode_tps, overhead_s=r.overhead_s)
        for r in rows
        if queue in r.queue_list
    ]
    own = local_speed(model)  # this process's own measurement: live while it runs
    if own is not None and queue in worker_queues():
        speeds.append(Throughput(*own))
    _cache[key] = (time.monotonic(), speeds)
    return speeds


def throughput_for(
    *,
    model: str,
    queue: str = "gpu",
    price: PriceLike | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
) -> Throughput:
    """The throughput that bounds ``model``'s work on ``queue``: the slowest live worker's (upper bound).

    "Slowest" for the call at hand (``tokens_in`` / ``tokens_out``, else a 512-in/128-out call):
    the most device-seconds, or with ``price`` the most money (a CUDA worker's seconds at the GPU
    price). Without any live profile: the documented default for the model.
    """
    speeds = _live_profiles(model, queue)
    if not speeds:
        return DEFAULT_THROUGHPUTS.get(model, DEFAULT_THROUGHPUT)
    shape = (
        _REFERENCE_TOKENS[0] if tokens_in is None else tokens_in,
        _REFERENCE_TOKENS[1] if tokens_out is None else tokens_out,
    )

    def weight(speed: Throughput) -> float:
        seconds = _seconds(speed, *shape)
        return float(device_cost(price=price, seconds=seconds, device=speed.device)) if price else seconds

    return max(speeds, key=lambda speed: (weight(speed), _seconds(speed, *shape)))


def device_seconds_estimate(
    *, model: str, tokens_in: int, tokens_out: int = 0, queue: str = "gpu", price: PriceLike | None = None
) -> tuple[float, str]:
    """(predicted device-seconds, device) of one call: no safety factor — an estimate.

    ``price``: choose the worker whose seconds cost the most at it (see ``throughput_for``)."""
    speed = throughput_for(model=model, queue=queue, price=price, tokens_in=tokens_in, tokens_out=tokens_out)
    return _seconds(speed, tokens_in, tokens_out), speed.device


def device_seconds_bound(
    *, model: str, tokens_in: int, tokens_out: int = 0, queue: str = "gpu", price: PriceLike | None = None
) -> tuple[float, str]:
    """(device-seconds a reservation holds, device): the estimate × SAFETY_FACTOR."""
    seconds, device = device_seconds_estimate(
        model=model, tokens_in=tokens_in, tokens_out=tokens_out, queue=queue, price=price
    )
    return seconds * SAFETY_FACTOR, device


def per_second_price(*, price: PriceLike, device: str) -> Decimal:
    """What one second of ``device`` costs at ``price``."""
    return price.per_gpu_second if device.startswith("cuda") else price.per_cpu_second


def device_cost(*, price: PriceLike, seconds: float, device: str) -> Decimal:
    """``seconds`` on ``device`` at ``price`` (a GPU-second or a CPU-second)."""
    on_gpu = device.startswith("cuda")
    usage = Usage(
        gpu_seconds=to_decimal(round(seconds, 6)) if on_gpu else Decimal(0),
        cpu_seconds=Decimal(0) if on_gpu else to_decimal(round(seconds, 6)),
    )
    return cost_of(usage=usage, price=price)
