"""The metered model call: resolve an endpoint, reserve budget, run the engine's meter, write the ledger.

Every model call in Parsimony goes through ``model_call`` (directly, or with a reservation the
caller already holds for a whole query), so every token is counted and priced the same way, and every
prompt is checked against the model's context window and the per-request ceiling before it is
reserved or run (``apps.costs.tokens.prompt_check``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.costs.billing import generation_bill
from apps.costs.cost_model import (
    Throughput,
    device_cost,
    device_seconds_bound,
    per_second_price,
    throughput_for,
)
from apps.costs.models import EndpointKind, ModelEndpoint, Price, Reservation, Stage, UsageRecord
from apps.costs.pricing import MONEY_QUANTUM, to_decimal, worst_case_cost
from apps.costs.services import (
    BudgetExceeded,
    LedgerContext,
    PriceStale,
    TryAgain,
    price_current,
    price_for_call,
    reservation_release,
)

# The metered call's one-commit reservation (the PostgreSQL hot path's entry): internal to apps/costs.
from apps.costs.services.budgets import _reserve
from apps.costs.services.holds import hold_cover
from apps.costs.services.ledger import hold_billed
from apps.costs.services.profiles import profile_after_call, profile_ensure
from apps.costs.tokens import endpoint_tokenizer, prompt_check, prompt_tokens_bound
from apps.costs.worker_identity import local_speed

if TYPE_CHECKING:
    from workers.runtime.decode import Allowance

# Local generation grows its hold while decoding (``hold_allowance``): it starts covering the prefill and
# GROWTH_FIRST_TOKENS steps, then grows by slices of max(GROWTH_MIN_TOKENS steps, GROWTH_FRACTION of the
# compute so far), so a hold ends within one slice of what was spent, with few extensions per call.
GROWTH_FIRST_TOKENS = 16
GROWTH_MIN_TOKENS = 8
GROWTH_FRACTION = 0.25

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

        api_key = endpoint_api_key(endpoint)
        # The endpoint's named HF tokenizer, or tiktoken's encoding for an OpenAI-family model: the
        # meter's fallback counts (usage not reported) and compression budgets are then exact.
        tokenizer = endpoint_tokenizer(endpoint)
        return OpenAICompatConfig(
            base_url=endpoint.base_url,
            model=endpoint.remote_model or endpoint.name,
            api_key=api_key,
            name=endpoint.name,
            tokenizer=tokenizer,
            network_policy=endpoint_network_policy(endpoint),
        )
    raise ValidationFailed(f"model {endpoint.name!r} has an unknown kind {endpoint.kind!r}")


def endpoint_network_policy(endpoint: ModelEndpoint):
    """A team's own endpoint connects only to public addresses or the operator's exceptions
    (``PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS``); a global one (``team=None``, the operator's) is
    not restricted: None."""
    if endpoint.team_id is None:
        return None
    from apps.core.network import ENDPOINTS, network_policy

    return network_policy(setting=ENDPOINTS)


def endpoint_api_key(endpoint: ModelEndpoint) -> str | None:
    """The endpoint's API key in plain text, for the client being built (and nowhere else): the stored
    one, decrypted (apps/core/secrets.py), else the environment variable it names, else none."""
    if endpoint.api_key_encrypted:
        from apps.core.secrets import secret_decrypt

        return secret_decrypt(endpoint.api_key_encrypted, what=f"the API key of model endpoint {endpoint.name!r}")
    api_key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
    if endpoint.api_key_env and not api_key:
        raise ValidationFailed(f"model {endpoint.name!r}: environment variable {endpoint.api_key_env} is not set")
    return api_key


def endpoint_loaded(endpoint: ModelEndpoint) -> bool:
    """Whether the endpoint's engine object is ready in this process: False only for a local model
    not loaded yet (its first call loads it: tens of seconds on a cold worker)."""
    if _target_override is not None or endpoint.kind != EndpointKind.LOCAL:
        return True
    from workers.runtime.local_lm import causal_lm_loaded

    return causal_lm_loaded(endpoint.source or "smollm2-135m-instruct")


def call_estimate(
    *, endpoint: ModelEndpoint, target, messages: list[dict], max_output_tokens: int, price: Price | None = None
) -> tuple[int, Decimal]:
    """(prompt tokens, what the call's hold must cover before it starts) (``price``: the one in force by
    default): a remote call's worst case; a local generation's start, its decoding grows the hold."""
    prompt_tokens = call_prompt_bound(endpoint, target, messages)
    price = price or price_current(model_name=endpoint.price_name)
    return prompt_tokens, _worst_case(endpoint, target, price, prompt_tokens, max_output_tokens)


def call_prompt_bound(endpoint: ModelEndpoint, target, messages: list[dict], tools: list[dict] | None = None) -> int:
    """The most prompt tokens one call can be billed without an overage row (``apps.costs.tokens``).

    A loaded local model (or the engine's echo double) counts its own prompt exactly; a remote
    endpoint is counted with its tokenizer, tiktoken, or the UTF-8 byte bound.
    """
    from workers.runtime.local_lm import LoadedModel
    from workers.runtime.meter import EchoTarget, count_chat_tokens

    if isinstance(target, (LoadedModel, EchoTarget)):
        return count_chat_tokens(target, messages)
    return prompt_tokens_bound(endpoint, messages, tools)


def _worst_case(endpoint: ModelEndpoint, target, price: Price, prompt_tokens: int, max_output_tokens: int) -> Decimal:
    """What a call's hold must cover before it starts: for a local endpoint (whatever runs it: the
    loaded model, none yet in the web process, the engine's echo double in tests)
    ``local_start_bound``, its decoding growing the hold (``hold_allowance``); for a remote endpoint
    every token at its price."""
    if endpoint.kind == EndpointKind.LOCAL:
        return local_start_bound(
            model=endpoint.price_name, price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens
        )
    return worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)


def _local_model(target) -> bool:
    from workers.runtime.local_lm import LoadedModel

    return isinstance(target, LoadedModel)


def hold_budget_s(
    *, reservation: Reservation, price: Price, device: str, prompt_tokens: int, max_output_tokens: int
) -> float | None:
    """The device-seconds ``reservation`` can still pay for on ``device``: what it still covers (its
    estimate − the rows already billed under it − this call's token cost at most) ÷ the price of a
    second there. None when device time is free at ``price`` (nothing to enforce)."""
    per_second = per_second_price(price=price, device=device)
    if per_second <= 0:
        return None
    tokens = worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)
    # One quantum short of the rest, so the row's rounding (half up, 10 places) cannot pass it.
    left = reservation.estimate - hold_billed(reservation) - tokens - MONEY_QUANTUM
    return max(0.0, float(left / per_second) * (1 - 1e-9))


def local_start_bound(*, model: str, price: Price, prompt_tokens: int, max_output_tokens: int) -> Decimal:
    """What a local generation's hold must cover before it starts: every token it can be billed at
    the token prices (the whole output cap; local token prices are usually 0) and the device-seconds
    bound of its prefill and first ``GROWTH_FIRST_TOKENS`` decode steps. Decoding then grows the hold
    (``hold_allowance``)."""
    tokens = worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)
    seconds, device = device_seconds_bound(
        model=model, tokens_in=prompt_tokens, tokens_out=min(GROWTH_FIRST_TOKENS, max_output_tokens), price=price
    )
    return tokens + device_cost(price=price, seconds=seconds, device=device)


def growth_steps(needed_s: float, step_s: float) -> tuple[float, float]:
    """The device-seconds a growing hold asks to cover, in order, when a decode step would pass it: the
    compute so far plus one slice (max(GROWTH_MIN_TOKENS steps, GROWTH_FRACTION of it)), else just the
    next step."""
    return needed_s + max(GROWTH_MIN_TOKENS * step_s, GROWTH_FRACTION * needed_s), needed_s


def hold_allowance(
    *, reservation: Reservation, price: Price, device: str, prompt_tokens: int, max_output_tokens: int
) -> Allowance | None:
    """The device-seconds ``reservation`` pays for a local generation on ``device``, growing as it decodes.

    Starts at ``hold_budget_s``. When the next decode step would pass it, the hold is extended
    (``reservation_extend``) to the compute so far plus one more slice: max(GROWTH_MIN_TOKENS steps,
    GROWTH_FRACTION × the compute so far), or, when a budget refuses that, just the next step; when
    even that is refused the generation stops with finish_reason "budget". A hold thus ends at most
    one slice above what its generation spent. None when device time is free at ``price``.
    """
    from workers.runtime.decode import Allowance

    per_second = per_second_price(price=price, device=device)
    if per_second <= 0:
        return None
    tokens = worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)

    def covered() -> float:
        return hold_budget_s(
            reservation=reservation, price=price, device=device, prompt_tokens=prompt_tokens,
            max_output_tokens=max_output_tokens,
        ) or 0.0

    def grow(needed_s: float, step_s: float) -> float:
        billed = hold_billed(reservation)
        for seconds in growth_steps(needed_s, step_s):
            # What hold_budget_s needs to find ``seconds`` left (its quantum and 1e-9 margin, and more).
            try:
                hold_cover(reservation, billed + tokens + 2 * MONEY_QUANTUM
                            + to_decimal(seconds * (1 + 1e-6)) * per_second)
                break
            except BudgetExceeded:
                continue
        return covered()

    return Allowance(covered(), grow)


def generation_allowance(
    *, model: str, reservation: Reservation, price: Price, device: str, prompt_tokens: int, max_output_tokens: int,
    prefill_tokens: int | None = None,
) -> Allowance | None:
    """A local generation's growing allowance under ``reservation``: the hold first grows to cover the
    generation's start (``local_start_bound``, with ``prefill_tokens`` read: ``prompt_tokens`` by
    default) on top of what was billed under it, if it does not already; a budget that refuses leaves
    the allowance at what is left (the generation then stops with "budget" where it ends)."""
    start = local_start_bound(
        model=model, price=price, prompt_tokens=prompt_tokens if prefill_tokens is None else prefill_tokens,
        max_output_tokens=max_output_tokens,
    )
    if prefill_tokens is not None and prefill_tokens != prompt_tokens:  # every prompt token at its price
        start += worst_case_cost(price=price, prompt_tokens=prompt_tokens - prefill_tokens, max_output_tokens=0)
    try:
        hold_cover(reservation, hold_billed(reservation) + start)
    except BudgetExceeded:
        pass
    return hold_allowance(
        reservation=reservation, price=price, device=device, prompt_tokens=prompt_tokens,
        max_output_tokens=max_output_tokens,
    )


def local_speed_or_model(model: str, *, tokens_in: int) -> Throughput:
    """How fast ``model`` runs a call here: this process's own measurement when it has one (the call
    runs here), else the cost model's (the slowest live worker's, or the default)."""
    own = local_speed(model)
    return Throughput(*own) if own else throughput_for(model=model, tokens_in=tokens_in)


def _hold_kwargs(
    endpoint: ModelEndpoint, target, reservation: Reservation, price: Price, prompt_tokens: int, cap: int
) -> dict:
    """``generate``'s hold arguments for a local model: a growing allowance and the cost model's
    predictions (``prompt_tokens``: the local model's own count, as ``call_prompt_bound`` made it).
    The hold first grows to cover the call's start (``local_start_bound``) if it does not already."""
    allowance = generation_allowance(
        model=endpoint.price_name, reservation=reservation, price=price,
        device=str(getattr(target, "device", "cpu")), prompt_tokens=prompt_tokens, max_output_tokens=cap,
    )
    if allowance is None:
        return {}
    speed = local_speed_or_model(endpoint.price_name, tokens_in=prompt_tokens)
    return {
        "budget_s": allowance,
        "expected_prefill_s": speed.overhead_s + prompt_tokens / speed.prefill_tps,
        "expected_step_s": 1.0 / speed.decode_tps if speed.decode_tps else 0.0,
    }


@dataclass
class MeteredCall:
    text: str
    finish_reason: str
    record: UsageRecord
    tool_calls: list[dict] | None = None  # OpenAI-style tool calls (endpoints asked with `tools`)
    repetition_tokens_saved: int = 0  # a local model's loop stopped early: output tokens not spent
    token_logprobs: list[float] | None = None  # a local model's per-token log-probabilities (None: unknown)

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
    decoding: dict | None = None,
    grammar: dict | None = None,
) -> MeteredCall:
    """Run one metered model call. Without a ``reservation`` it reserves (and settles) its own.

    ``grammar``: a JSON schema a local model's output must follow (constrained decoding,
    ``workers.runtime.grammar``); remote endpoints ignore it (they call tools natively, ``tools``).

    ``decoding``: a pipeline's overrides of the model's decoding defaults
    (``workers.runtime.decoding``): a local model gets them all, a remote endpoint their stop strings.

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
    # Refused before anything is measured, reserved or run when it cannot fit the model's window or the
    # ceiling. Counted before the call: a remote endpoint reporting more than this (or more output than
    # the max_tokens sent) is billed in full, the excess as its own overage row (billing.generation_bill).
    checked = prompt_check(endpoint, messages, max_output_tokens=cap, tools=tools, target=target,
                           count=lambda: call_prompt_bound(endpoint, target, messages, tools))
    prompt_bound = checked if checked is not None else call_prompt_bound(endpoint, target, messages, tools)
    local = _local_model(target)
    if local:  # embedded mode: measure this process's speed on the model's first use
        profile_ensure(model_name=endpoint.price_name, target=target)
    if reserve is not None:
        reservation = reserve(target) or reservation
    own_reservation = None
    if reservation is None:
        own_reservation, price = _reserve_for_call(endpoint, target, prompt_bound, cap, price, context, stage)
    try:
        hold = _hold_kwargs(endpoint, target, reservation or own_reservation, price, prompt_bound, cap) if local else {}
        if decoding:
            from workers.runtime.decoding import decoding_settings

            settings_ = decoding_settings(getattr(target, "name", "") or endpoint.source, decoding)
            if local:
                hold["decoding"] = settings_
            else:
                if settings_.stop:
                    stop = [*(stop or []), *settings_.stop]
                if settings_.temperature > 0:
                    hold["temperature"] = settings_.temperature
        result = generate(
            target=target,
            messages=messages,
            max_output_tokens=cap,
            wall_time_limit_s=wall_time_limit_s or settings.PARSIMONY_MODEL_WALL_TIME_S,
            on_token=on_token,
            stop=stop,
            **({"tools": tools} if tools else {}),
            **({"grammar": grammar} if grammar is not None and local else {}),
            **hold,
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
        prompt_tokens_bound=prompt_bound,
        max_output_tokens=cap,
    )
    if local:
        profile_after_call(model_name=endpoint.price_name)
    return MeteredCall(
        text=result.text, finish_reason=result.finish_reason, record=record, tool_calls=result.tool_calls,
        repetition_tokens_saved=getattr(result, "repetition_tokens_saved", 0),
        token_logprobs=getattr(result, "token_logprobs", None),
    )


def _reserve_for_call(endpoint, target, prompt_tokens, cap, price, context, stage) -> tuple[Reservation, Price]:
    """Reserve the call's worst case (``prompt_tokens``: its bound) at ``price``.

    When that (cached) price is no longer in force, reserve at the one that is."""
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
