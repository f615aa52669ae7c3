"""Whether a bulk job can run as a provider batch (apps/bulk/provider_batch.py), and at what price: checked
when the job starts (a clear error naming what is missing), read again when its rows are billed."""

from __future__ import annotations

import copy

from apps.bulk.models import BulkMode
from apps.costs.models import EndpointKind, ModelEndpoint, Price
from apps.costs.services import PriceMissing, price_current

MODES = tuple(BulkMode.values)


def batch_price_problem(price: Price) -> str | None:
    if price.batch_input_per_mtok is None or price.batch_output_per_mtok is None:
        return (f"the price book has no batch price for {price.model_name!r} (import one with the LiteLLM table "
                "or enter it in the admin)")
    return None


def endpoint_batch_problem(*, endpoint: ModelEndpoint) -> str | None:
    """Why ``endpoint`` cannot take a provider batch (None when it can)."""
    if endpoint.kind == EndpointKind.LOCAL:
        return f"model {endpoint.name!r} is a local model; provider batches need a remote endpoint"
    if not endpoint.batch_api:
        return (f"model endpoint {endpoint.name!r} is not marked as offering the provider Batch API "
                "(its batch_api setting)")
    try:
        price = price_current(model_name=endpoint.price_name)
    except PriceMissing as exc:
        return str(exc)
    return batch_price_problem(price)


def provider_batch_problem(*, pipeline, batch_size: int, prompt_problem: str | None) -> str | None:
    """Why a bulk job of ``pipeline`` cannot run as a provider batch (None when it can). ``prompt_problem``:
    why its prompt cannot be built as plain naive messages (``apps.bulk.services.pipeline_batch_problem``)."""
    problem = endpoint_batch_problem(endpoint=pipeline.model_endpoint)
    if problem:
        return problem
    if batch_size != 1:
        return "a provider batch sends one question per request: use batch_size 1"
    if pipeline.is_cascade:
        return "it is a cascade (its tiers answer one after another); a provider batch asks one model"
    return f"the prompt is built here: {prompt_problem}" if prompt_problem else None


def batch_price(price: Price) -> Price:
    """``price`` as charged through the Batch API: an unsaved copy (the same row, so the ledger row points at
    it) whose token prices are its batch prices; cached input at the batch input price."""
    charged = copy.copy(price)
    charged.input_per_mtok = price.batch_input_per_mtok
    charged.output_per_mtok = price.batch_output_per_mtok
    charged.cached_input_per_mtok = None
    return charged


__all__ = ["MODES", "batch_price", "batch_price_problem", "endpoint_batch_problem", "provider_batch_problem"]
