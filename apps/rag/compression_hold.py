"""The compress stage's share of a query's hold, grown from its plan and then call by call.

Before the stage runs, the method's plan (``workers.compression.CompressionPlan``: no model runs)
says what it will do; the hold grows by the bound of what does not depend on a model call: the
sentence embeddings and the local scorer's passes, at the cost model's speeds × its safety
factor. Each summary call then grows the hold before it runs, counted exactly (its prompt, its
cap): a remote endpoint's tokens at their price; a local model's start (prefill and the first
decode steps) and, while it decodes, slices as for any local generation
(``metering.hold_allowance``). The stage's row is billed at most the bound this accumulated
(``bound``): what ran past it is the operator's (docs/costs.md, "Holds grow with the work").
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from apps.costs.cost_model import SAFETY_FACTOR, device_cost, per_second_price, throughput_for
from apps.costs.defaults import LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.metering import GROWTH_FIRST_TOKENS, growth_steps, local_speed_or_model
from apps.costs.models import ZERO, Price
from apps.costs.pricing import MONEY_QUANTUM, to_decimal, worst_case_cost
from apps.costs.services import BudgetExceeded
from apps.costs.services.holds import Hold

# The scorer of a pipeline whose endpoint is remote (no logits over an API): the default local LM.
DEFAULT_SCORER_PRICE_NAME = "local/smollm2-135m-instruct"


class CompressionHold:
    """One query's compress stage under ``hold``, at the endpoint's ``price`` (``model``: its price name;
    ``local``: whether the endpoint's model is a local one, whose summary calls decode under a growing
    allowance). ``bound`` is the stage's accumulated bound: its row is billed at most that."""

    def __init__(self, *, hold: Hold, price: Price, model: str, local: bool) -> None:
        self.hold = hold
        self.price = price
        self.model = model
        self.local = local
        self.bound = ZERO

    def _seconds_cost(self, seconds: float) -> Decimal:
        # The stage is billed as CPU seconds at the endpoint's price (``question_runner.QueryHooks.bill_compression``).
        return device_cost(price=self.price, seconds=seconds, device="cpu")

    def _grow_to(self, bound: Decimal) -> None:
        """The stage's bound becomes ``bound`` (when larger); the hold covers it on top of the rows
        already billed under it (BudgetExceeded when a budget refuses: nothing changed)."""
        if bound > self.bound:
            self.hold.ensure(bound)
            self.bound = bound

    def planned(self, plan: Any) -> Callable[[Any], dict[str, Any] | None] | None:
        """Grow by the plan's work outside model calls; return the per-call hook (None: no calls)."""
        seconds = 0.0
        if plan.embed_calls or plan.embed_tokens:
            speed = throughput_for(model=LOCAL_EMBEDDING_PRICE_NAME, tokens_in=plan.embed_tokens)
            seconds += plan.embed_calls * speed.overhead_s + plan.embed_tokens / max(speed.prefill_tps, 1e-9)
        if plan.scorer_passes or plan.scorer_tokens:
            scorer = self.model if self.local else DEFAULT_SCORER_PRICE_NAME
            speed = throughput_for(model=scorer, tokens_in=plan.scorer_tokens)
            seconds += plan.scorer_passes * speed.overhead_s + plan.scorer_tokens / max(speed.prefill_tps, 1e-9)
        # The scorer's tokens are the endpoint's prompt tokens when it is the endpoint's model.
        tokens = worst_case_cost(price=self.price, prompt_tokens=plan.scorer_tokens, max_output_tokens=0)
        self._grow_to(self.bound + tokens + self._seconds_cost(seconds * SAFETY_FACTOR))
        return self.model_call if plan.model_calls else None

    def model_call(self, call: Any) -> dict[str, Any] | None:
        """Before one summary call (``workers.compression.ModelCall``, counted exactly): grow the hold
        for it; for a local model, return the meter's growing allowance and its speed predictions."""
        tokens = worst_case_cost(price=self.price, prompt_tokens=call.prompt_tokens,
                                 max_output_tokens=call.max_output_tokens)
        base = self.bound + tokens
        if not self.local:
            self._grow_to(base)
            return None
        from workers.runtime.decode import Allowance

        speed = local_speed_or_model(self.model, tokens_in=call.prompt_tokens)
        prefill_s = speed.overhead_s + call.prompt_tokens / max(speed.prefill_tps, 1e-9)
        step_s = 1.0 / speed.decode_tps if speed.decode_tps else 0.0
        start_s = (prefill_s + min(GROWTH_FIRST_TOKENS, call.max_output_tokens) * step_s) * SAFETY_FACTOR
        self._grow_to(base + self._seconds_cost(start_s))
        per_second = per_second_price(price=self.price, device="cpu")
        if per_second <= 0:  # device time is free at this price: nothing to enforce
            return None

        def covered() -> float:
            return max(0.0, float((self.bound - base - MONEY_QUANTUM) / per_second))

        def grow(needed_s: float, step: float) -> float:
            for seconds in growth_steps(needed_s, step):
                try:
                    self._grow_to(base + 2 * MONEY_QUANTUM + to_decimal(seconds * (1 + 1e-6)) * per_second)
                    break
                except BudgetExceeded:
                    continue
            return covered()

        return {"budget_s": Allowance(covered(), grow), "expected_prefill_s": prefill_s, "expected_step_s": step_s}
