"""Exact cost arithmetic: Decimal in, Decimal out, never float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

MILLION = Decimal(1_000_000)
MONEY_QUANTUM = Decimal("0.0000000001")  # matches the 10 decimal places stored


class PriceLike(Protocol):
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    per_gpu_second: Decimal
    per_cpu_second: Decimal


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens served from a prefix cache
    gpu_seconds: Decimal = Decimal(0)
    cpu_seconds: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.cached_tokens > self.prompt_tokens:
            raise ValueError(f"cached_tokens ({self.cached_tokens}) exceed prompt_tokens ({self.prompt_tokens})")


def to_decimal(value: float | int | str | Decimal) -> Decimal:
    """Seconds and the like arrive as floats from timers: convert through str, never binary."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def cached_input_price(price: PriceLike) -> Decimal:
    return price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok


def cost_of(*, usage: Usage, price: PriceLike) -> Decimal:
    """What ``usage`` costs at ``price``: tokens × price per 1M tokens, plus device seconds × price."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    token_cost = (
        uncached * price.input_per_mtok
        + usage.cached_tokens * cached_input_price(price)
        + usage.completion_tokens * price.output_per_mtok
    ) / MILLION
    device_cost = (
        to_decimal(usage.gpu_seconds) * price.per_gpu_second
        + to_decimal(usage.cpu_seconds) * price.per_cpu_second
    )
    return money(token_cost + device_cost)


def worst_case_cost(
    *, price: PriceLike, prompt_tokens: int, max_output_tokens: int, max_seconds: float = 0.0, on_gpu: bool = False
) -> Decimal:
    """The most a call can cost: every prompt token uncached, every output token used, the whole wall time."""
    seconds = to_decimal(max_seconds)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=max_output_tokens,
        gpu_seconds=seconds if on_gpu else Decimal(0),
        cpu_seconds=Decimal(0) if on_gpu else seconds,
    )
    return cost_of(usage=usage, price=price)


class ChargedUsage(Protocol):
    """A ledger row's usage and the prices it was charged at (``apps.costs.models.UsageRecord``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    gpu_seconds: Decimal
    cpu_seconds: Decimal
    price_input_per_mtok: Decimal
    price_output_per_mtok: Decimal
    price_cached_input_per_mtok: Decimal | None
    price_per_gpu_second: Decimal
    price_per_cpu_second: Decimal


@dataclass(frozen=True)
class PriceSnapshot:
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    per_gpu_second: Decimal
    per_cpu_second: Decimal


def price_charged(record: ChargedUsage) -> PriceSnapshot:
    """The prices a ledger row was charged at, as a price (for pricing a counterfactual the same way)."""
    return PriceSnapshot(
        record.price_input_per_mtok, record.price_output_per_mtok, record.price_cached_input_per_mtok,
        record.price_per_gpu_second, record.price_per_cpu_second,
    )
