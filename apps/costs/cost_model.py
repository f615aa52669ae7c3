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


# Used only until a worker has measured itself (SmolLM2-135M / MiniLM-sized models on 2 CPU threads).
DEFAULT_THROUGHPUT = Throughput(device="cpu", prefill_tps=400.0, decode_tps=10.0, overhead_s=0.5)


def throughput_for(*, model: str, queue: str = "gpu") -> Throughput:
    """The throughput that bounds ``model``'s work on ``queue``: the slowest live worker's (upper bound)."""
    return DEFAULT_THROUGHPUT


def device_seconds_estimate(
    *, model: str, tokens_in: int, tokens_out: int = 0, queue: str = "gpu"
) -> tuple[float, str]:
    """(predicted device-seconds, device) of one call: no safety factor — an estimate."""
    speed = throughput_for(model=model, queue=queue)
    seconds = speed.overhead_s + tokens_in / speed.prefill_tps + tokens_out / speed.decode_tps
    return seconds, speed.device


def device_seconds_bound(
    *, model: str, tokens_in: int, tokens_out: int = 0, queue: str = "gpu"
) -> tuple[float, str]:
    """(device-seconds a reservation holds, device): the estimate × SAFETY_FACTOR."""
    seconds, device = device_seconds_estimate(
        model=model, tokens_in=tokens_in, tokens_out=tokens_out, queue=queue
    )
    return seconds * SAFETY_FACTOR, device


def device_cost(*, price: PriceLike, seconds: float, device: str) -> Decimal:
    """``seconds`` on ``device`` at ``price`` (a GPU-second or a CPU-second)."""
    on_gpu = device.startswith("cuda")
    usage = Usage(
        gpu_seconds=to_decimal(round(seconds, 6)) if on_gpu else Decimal(0),
        cpu_seconds=Decimal(0) if on_gpu else to_decimal(round(seconds, 6)),
    )
    return cost_of(usage=usage, price=price)
