"""The default local models and their prices, so a fresh install can answer and bill right away.

Local compute is priced per device-second: $4.00 per GPU-hour (an H100-class rental) and
$0.08 per CPU-hour (a 2-vCPU VM). Change them in the admin: a change is a new Price row.
Used by the seed migration (with historical models) and by tests that flush the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

EFFECTIVE = datetime(2026, 1, 1, tzinfo=UTC)
QUANTUM = Decimal("0.0000000001")
GPU_PER_SECOND = (Decimal("4.00") / 3600).quantize(QUANTUM)
CPU_PER_SECOND = (Decimal("0.08") / 3600).quantize(QUANTUM)
# The bundled sentence embedder, and its name in the price book ("local/" + the model's folder name, as
# apps.corpora.services.embedding.price_name names any local embedder): what retrieval, tool search, the
# quality check and the embeddings API bill its seconds under.
LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
LOCAL_EMBEDDING_PRICE_NAME = "local/all-minilm-l6-v2"
LOCAL_PRICES = ["local/smollm2-135m-instruct", LOCAL_EMBEDDING_PRICE_NAME, "local/gemma-3-270m"]
DEFAULT_ENDPOINT = {
    "name": "smollm2-135m-instruct",
    "kind": "local",
    "source": "smollm2-135m-instruct",
    "price_name": "local/smollm2-135m-instruct",
    "context_window": 8192,
    "max_output_tokens": 256,
}


def ensure_default_models(*, endpoint_model=None, price_model=None) -> None:
    if endpoint_model is None or price_model is None:
        from apps.costs.models import ModelEndpoint, Price

        endpoint_model, price_model = ModelEndpoint, Price
    for name in LOCAL_PRICES:
        price_model.objects.get_or_create(
            model_name=name,
            effective_from=EFFECTIVE,
            defaults={
                "per_gpu_second": GPU_PER_SECOND,
                "per_cpu_second": CPU_PER_SECOND,
                "provider": "local",
                "source": "parsimony default for local compute",
            },
        )
    fields = dict(DEFAULT_ENDPOINT)
    endpoint_model.objects.get_or_create(team=None, name=fields.pop("name"), defaults=fields)
