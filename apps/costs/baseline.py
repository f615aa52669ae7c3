"""What the naive pipeline's generation would have cost: the counterfactual every saving is claimed against.

Tokens are counted exactly and priced at the prices the real call was charged, so a token-priced
(remote) baseline is exact. Device time is never scaled from the real call (a slower compressed or
superposition run would inflate its own baseline): it is the calibrated cost model's estimate for
the naive prompt's tokens and the same output tokens (``apps.costs.cost_model.device_seconds_estimate``),
priced at the device-second price charged — an estimate, labelled so. Shadow runs
(``apps.rag.shadow``) measure how good that estimate is.
"""

from __future__ import annotations

from decimal import Decimal

from apps.costs.cost_model import device_cost, device_seconds_estimate
from apps.costs.pricing import ChargedUsage, PriceLike, Usage, cost_of, money, price_charged

EXACT = "exact"  # tokens × token prices: nothing estimated
ESTIMATE = "estimate"  # device seconds from the cost model


def naive_generation_cost(
    *, record: ChargedUsage, prompt_tokens: int, model: str, queue: str = "gpu"
) -> tuple[Decimal, str]:
    """(cost, kind) of the naive generation: ``prompt_tokens`` in, the real call's completion tokens out.

    ``record`` is the real generation's ledger row (its prices, its output tokens, whether it was
    charged device time and on which device); ``model`` names the model for the cost model.
    """
    price = price_charged(record)
    tokens = cost_of(
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=record.completion_tokens), price=price
    )
    on_gpu = record.gpu_seconds > 0
    if not on_gpu and record.cpu_seconds <= 0:
        return tokens, EXACT  # a remote endpoint: its tokens are its price
    seconds, _device = device_seconds_estimate(
        model=model, tokens_in=prompt_tokens, tokens_out=record.completion_tokens, queue=queue
    )
    # Priced on the device the real call was charged for, at the price it was charged.
    device = device_cost(price=price, seconds=seconds, device="cuda" if on_gpu else "cpu")
    return money(tokens + device), ESTIMATE


def naive_generation_estimate(
    *, price: PriceLike, prompt_tokens: int, completion_tokens: int, model: str, local: bool, queue: str = "gpu"
) -> tuple[Decimal, str]:
    """(cost, "estimate") of the naive generation of a run that generated nothing (an extractive answer):
    ``prompt_tokens`` in and ``completion_tokens`` out (the quoted answer's length: the output is assumed,
    so this is always an estimate), at ``price`` (the endpoint's current one); a ``local`` model's device
    time from the cost model on the device it names for ``queue``."""
    tokens = cost_of(usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens), price=price)
    if not local:
        return tokens, ESTIMATE
    seconds, device = device_seconds_estimate(
        model=model, tokens_in=prompt_tokens, tokens_out=completion_tokens, queue=queue, price=price
    )
    return money(tokens + device_cost(price=price, seconds=seconds, device=device)), ESTIMATE


__all__ = ["ESTIMATE", "EXACT", "naive_generation_cost", "naive_generation_estimate"]
