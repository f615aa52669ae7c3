"""The one way a generation becomes a ledger row (tokens, cached tokens, device seconds, wall time,
finish reason), under a reservation.

Used by ``metering.model_call`` and by the generations the RAG engine runs with a local model
itself (superposition, fixed-context answers), so that every generation is billed alike.

Overage: given the call's bounds (the prompt tokens counted before the call, the max_tokens sent),
a remote endpoint's report beyond them is billed in full but split: the generation row holds the
usage up to the bounds, the excess is its own row (stage ``overage``, same reservation, same
prices), the settlement books both, and the team's admins are e-mailed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from django.db import transaction

from apps.costs.models import EndpointKind, ModelEndpoint, Price, Reservation, Stage, UsageRecord
from apps.costs.pricing import Usage, to_decimal
from apps.costs.services.alerts import overage_alert_after_commit
from apps.costs.services.backend import budget_lock
from apps.costs.services.budgets import reservation_settle
from apps.costs.services.ledger import LedgerContext, _usage_record_and_settle, usage_record
from apps.costs.services.prices import price_for_call


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


def overage_split(
    usage: Usage, *, prompt_tokens_bound: int | None, max_output_tokens: int | None
) -> tuple[Usage, Usage | None]:
    """(the usage within the call's bounds, the excess or None): tokens past either bound move to the excess.

    Cached prompt tokens stay on the bounded part first, so the two parts cost exactly the whole.
    """
    prompt_cap = usage.prompt_tokens if prompt_tokens_bound is None else max(0, prompt_tokens_bound)
    completion_cap = usage.completion_tokens if max_output_tokens is None else max(0, max_output_tokens)
    extra_prompt = max(0, usage.prompt_tokens - prompt_cap)
    extra_completion = max(0, usage.completion_tokens - completion_cap)
    if not extra_prompt and not extra_completion:
        return usage, None
    prompt = usage.prompt_tokens - extra_prompt
    cached = min(usage.cached_tokens, prompt)
    within = replace(usage, prompt_tokens=prompt, completion_tokens=usage.completion_tokens - extra_completion,
                     cached_tokens=cached)
    excess = Usage(prompt_tokens=extra_prompt, completion_tokens=extra_completion,
                   cached_tokens=usage.cached_tokens - cached)
    return within, excess


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
    prompt_tokens_bound: int | None = None,
    max_output_tokens: int | None = None,
) -> UsageRecord:
    """Write the ledger row for one generation under ``reservation``, charged at ``price``.

    ``priced_at`` (the metered call's hot path): the row is written only while ``price`` (possibly
    a per-process cached one) is still in force then, and with ``settle`` it settles its own
    reservation in the same commit. Without it: a plain ledger row at ``price``.

    ``prompt_tokens_bound`` / ``max_output_tokens``: what the call's reservation counted. Reported
    usage beyond them is billed as a separate ``overage`` row (see the module docstring); the
    generation row returned then holds the usage within the bounds.
    """
    usage, excess = overage_split(
        generation_usage(result=result, endpoint=endpoint),
        prompt_tokens_bound=prompt_tokens_bound, max_output_tokens=max_output_tokens,
    )
    latency_ms = int(result.wall_s * 1000)
    if excess is not None:
        if priced_at is not None and not settle and price is not None:
            # As the hot path would: charge the price in force, not a per-process cached one.
            price = price_for_call(model_name=price.model_name, fresh=True)
        return _bill_with_overage(
            context=context, endpoint=endpoint, usage=usage, excess=excess, price=price, reservation=reservation,
            stage=stage, latency_ms=latency_ms, finish_reason=result.finish_reason, settle=settle,
        )
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


def _bill_with_overage(
    *, context, endpoint, usage, excess, price, reservation, stage, latency_ms, finish_reason, settle
) -> UsageRecord:
    """The generation row and its overage row in one transaction (and, with ``settle``, the settlement to
    their sum), at the same price: the rare path, so the plain ORM rather than the one-statement hot path."""
    with budget_lock(), transaction.atomic():
        record = usage_record(
            context=context, stage=stage, model_name=endpoint.price_name, usage=usage, price=price,
            latency_ms=latency_ms, finish_reason=finish_reason, endpoint=endpoint, reservation=reservation,
        )
        overage = usage_record(
            context=context, stage=Stage.OVERAGE, model_name=endpoint.price_name, usage=excess, price=price,
            finish_reason=f"over {stage}", endpoint=endpoint, reservation=reservation,
        )
        if settle and reservation is not None:
            reservation_settle(reservation=reservation, actual=record.cost + overage.cost)
        overage_alert_after_commit(overage.pk)
    return record


__all__ = ["GenerationOutcome", "generation_bill", "generation_usage", "overage_split"]
