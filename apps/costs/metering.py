"""The metered model call: resolve an endpoint, reserve budget, run the engine's meter, write the ledger.

Every model call in Parsimony goes through ``model_call`` (directly, or with a reservation the
caller already holds for a whole query), so every token is counted and priced the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.costs.billing import generation_bill
from apps.costs.models import EndpointKind, ModelEndpoint, Price, Reservation, Stage, UsageRecord
from apps.costs.pricing import worst_case_cost
from apps.costs.services import (
    LedgerContext,
    PriceStale,
    TryAgain,
    price_current,
    price_for_call,
    reservation_release,
)

# The metered call's one-commit reservation (the PostgreSQL hot path's entry): internal to apps/costs.
from apps.costs.services.budgets import _reserve

# Tests may swap in the engine's EchoTarget for speed; production resolves real targets.
_target_override: Callable[[ModelEndpoint], Any] | None = None


def endpoints_available(*, team):
    return ModelEndpoint.objects.filter(Q(team=team) | Q(team=None), enabled=True).order_by("name")


def endpoint_resolve(*, team, name: str) -> ModelEndpoint:
    """The team's endpoint called ``name`` (a team's own wins over a global one)."""
    endpoint = endpoints_available(team=team).filter(name=name).order_by("team_id").last()
    if endpoint is None:
        known = ", ".join(endpoints_available(team=team).values_list("name", flat=True)) or "none"
        raise ValidationFailed(f"unknown model {name!r} (available: {known})", code="unknown_model")
    return endpoint


def endpoint_target(endpoint: ModelEndpoint):
    """The engine object for an endpoint: a loaded local model or an OpenAI-compatible config."""
    if _target_override is not None:
        return _target_override(endpoint)
    if endpoint.kind == EndpointKind.LOCAL:
        from workers.runtime.local_lm import load_causal_lm

        return load_causal_lm(endpoint.source or "smollm2-135m-instruct", cache_dir=settings.DATA_ROOT)
    if endpoint.kind == EndpointKind.OPENAI:
        from workers.runtime.openai_compat import OpenAICompatConfig

        api_key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        if endpoint.api_key_env and not api_key:
            raise ValidationFailed(f"model {endpoint.name!r}: environment variable {endpoint.api_key_env} is not set")
        tokenizer = None
        if endpoint.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(endpoint.tokenizer, local_files_only=True)
        return OpenAICompatConfig(
            base_url=endpoint.base_url,
            model=endpoint.remote_model or endpoint.name,
            api_key=api_key,
            name=endpoint.name,
            tokenizer=tokenizer,
        )
    raise ValidationFailed(f"model {endpoint.name!r} has an unknown kind {endpoint.kind!r}")


def _on_gpu(target) -> bool:
    return str(getattr(target, "device", "cpu")).startswith("cuda")


def call_estimate(
    *, endpoint: ModelEndpoint, target, messages: list[dict], max_output_tokens: int, price: Price | None = None
) -> tuple[int, Decimal]:
    """(prompt tokens, worst-case cost) of a call, for reservations (``price``: the one in force by default)."""
    from workers.runtime.meter import count_chat_tokens

    prompt_tokens = count_chat_tokens(target, messages)
    price = price or price_current(model_name=endpoint.price_name)
    return prompt_tokens, _worst_case(endpoint, target, price, prompt_tokens, max_output_tokens)


def _worst_case(endpoint: ModelEndpoint, target, price: Price, prompt_tokens: int, max_output_tokens: int) -> Decimal:
    is_local = endpoint.kind == EndpointKind.LOCAL
    return worst_case_cost(
        price=price,
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_output_tokens,
        max_seconds=settings.PARSIMONY_MODEL_WALL_TIME_S if is_local else 0.0,
        on_gpu=_on_gpu(target),
    )


@dataclass
class MeteredCall:
    text: str
    finish_reason: str
    record: UsageRecord
    tool_calls: list[dict] | None = None  # OpenAI-style tool calls (endpoints asked with `tools`)

    @property
    def cost(self) -> Decimal:
        return self.record.cost


def model_call(
    *,
    endpoint: ModelEndpoint,
    messages: list[dict],
    context: LedgerContext,
    stage: str = Stage.GENERATE,
    max_output_tokens: int | None = None,
    on_token: Callable[[str], None] | None = None,
    reservation: Reservation | None = None,
    wall_time_limit_s: float | None = None,
    stop: list[str] | None = None,
    tools: list[dict] | None = None,
    reserve: Callable[[Any], Reservation | None] | None = None,
) -> MeteredCall:
    """Run one metered model call. Without a ``reservation`` it reserves (and settles) its own.

    ``reserve``: called with the engine target once it is resolved, before anything runs; returns
    the reservation the call bills under (an agent step's hold, sized from the exact prompt).
    """
    from workers.runtime.meter import generate

    cap = (
        endpoint.max_output_tokens
        if max_output_tokens is None
        else min(max_output_tokens, endpoint.max_output_tokens)
    )
    # PostgreSQL: a per-process cached price, which the reservation (or the ledger row) checks is
    # still in force in the same statement; SQLite: looked up every call.
    priced_at = timezone.now()
    price = price_for_call(model_name=endpoint.price_name)
    target = endpoint_target(endpoint)
    if reserve is not None:
        reservation = reserve(target) or reservation
    own_reservation = None
    if reservation is None:
        own_reservation, price = _reserve_for_call(endpoint, target, messages, cap, price, context, stage)
    try:
        result = generate(
            target=target,
            messages=messages,
            max_output_tokens=cap,
            wall_time_limit_s=wall_time_limit_s or settings.PARSIMONY_MODEL_WALL_TIME_S,
            on_token=on_token,
            stop=stop,
            **({"tools": tools} if tools else {}),
        )
    except Exception:
        if own_reservation is not None:
            reservation_release(reservation=own_reservation)
        raise
    # The ledger row and the settlement commit together: never a row without its spend booked.
    record = generation_bill(
        context=context,
        endpoint=endpoint,
        result=result,
        price=price,
        reservation=reservation or own_reservation,
        stage=stage,
        priced_at=priced_at,
        settle=own_reservation is not None,
    )
    return MeteredCall(
        text=result.text, finish_reason=result.finish_reason, record=record, tool_calls=result.tool_calls
    )


def _reserve_for_call(endpoint, target, messages, cap, price, context, stage) -> tuple[Reservation, Price]:
    """Reserve the call's worst case at ``price``.

    When that (cached) price is no longer in force, reserve at the one that is."""
    from workers.runtime.meter import count_chat_tokens

    prompt_tokens = count_chat_tokens(target, messages)
    for _ in range(5):
        try:
            reservation = _reserve(
                team=context.team,
                user=context.user,
                api_key=context.api_key,
                estimate=_worst_case(endpoint, target, price, prompt_tokens, cap),
                description=f"{stage} on {endpoint.name}",
                price=price,
            )
            return reservation, price
        except PriceStale:
            price = price_for_call(model_name=endpoint.price_name, fresh=True)
    raise TryAgain(f"the price of {endpoint.price_name!r} kept changing; try again")
