"""The one way a generation becomes a ledger row (tokens, cached tokens, device seconds, wall time,
finish reason), under a reservation.

Used by ``metering.model_call`` and by the generations the RAG engine runs with a local model
itself (superposition, fixed-context answers), so that every generation is billed alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from apps.costs.models import EndpointKind, ModelEndpoint, Price, Reservation, Stage, UsageRecord
from apps.costs.pricing import Usage, to_decimal
from apps.costs.services.ledger import LedgerContext, _usage_record_and_settle, usage_record


class GenerationOutcome(Protocol):
    """What a generation reports (``workers.runtime.meter.GenerationResult`` and its subclasses)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    gpu_s: float
    compute_s: float
    wall_s: float
    finish_reason: str


def generation_usage(*, result: GenerationOutcome, endpoint: ModelEndpoint) -> Usage:
    """The usage to charge: GPU seconds when measured; a local model's compute on CPU as CPU
    seconds; no device time for a remote endpoint (its tokens are its price)."""
    on_local_cpu = endpoint.kind == EndpointKind.LOCAL and not result.gpu_s
    local_cpu_seconds = result.compute_s if on_local_cpu else 0.0
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
        gpu_seconds=to_decimal(result.gpu_s),
        cpu_seconds=to_decimal(local_cpu_seconds),
    )


def generation_bill(
    *,
    context: LedgerContext,
    endpoint: ModelEndpoint,
    result: GenerationOutcome,
    price: Price | None,
    reservation: Reservation | None,
    stage: str = Stage.GENERATE,
    priced_at: datetime | None = None,
    settle: bool = False,
) -> UsageRecord:
    """Write the ledger row for one generation under ``reservation``, charged at ``price``.

    ``priced_at`` (the metered call's hot path): the row is written only while ``price`` (possibly
    a per-process cached one) is still in force then, and with ``settle`` it settles its own
    reservation in the same commit. Without it: a plain ledger row at ``price``.
    """
    usage = generation_usage(result=result, endpoint=endpoint)
    latency_ms = int(result.wall_s * 1000)
    if priced_at is None:
        if settle:
            raise ValueError("settling with the ledger row needs priced_at (the metered call's hot path)")
        return usage_record(
            context=context, stage=stage, model_name=endpoint.price_name, usage=usage, price=price,
            latency_ms=latency_ms, finish_reason=result.finish_reason, endpoint=endpoint,
            reservation=reservation,
        )
    if price is None:
        raise ValueError("a price-checked ledger row needs a price")
    return _usage_record_and_settle(
        context=context, stage=stage, model_name=endpoint.price_name, usage=usage, price=price,
        priced_at=priced_at, latency_ms=latency_ms, finish_reason=result.finish_reason, endpoint=endpoint,
        reservation=reservation, settle=settle,
    )


__all__ = ["GenerationOutcome", "generation_bill", "generation_usage"]
