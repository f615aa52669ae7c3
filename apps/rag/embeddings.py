"""Embeddings for the OpenAI-compatible API: budgeted, metered, computed on the gpu queue."""

from __future__ import annotations

import time
from decimal import Decimal

from django.conf import settings

from apps.core.errors import ServiceError, ValidationFailed
from apps.core.models import Job, JobStatus
from apps.core.services import job_start
from apps.costs.cost_model import device_cost, device_seconds_bound
from apps.costs.models import Stage
from apps.costs.pricing import Usage, to_decimal, worst_case_cost
from apps.costs.services import (
    LedgerContext,
    budget_reserve,
    price_current,
    reservation_release,
    reservation_settle,
    usage_record,
)
from apps.costs.tokens import embedding_tokens

EMBEDDING_MODELS = {"all-MiniLM-L6-v2": "local/all-minilm-l6-v2"}


def embeddings_create(
    *, team, model: str, texts: list[str], user=None, api_key=None, timeout_s: float | None = None
) -> dict:
    if model not in EMBEDDING_MODELS:
        raise ValidationFailed(
            f"unknown embedding model {model!r} (available: {', '.join(EMBEDDING_MODELS)})", code="model_not_found"
        )
    price = price_current(model_name=EMBEDDING_MODELS[model])
    # Exact: the embedding model's own tokenizer, as the worker counts when it bills.
    estimated_tokens = embedding_tokens(model, texts)
    # Device time: the cost model's bound for MiniLM, at the device of the worker that would run it.
    seconds, device = device_seconds_bound(model=EMBEDDING_MODELS[model], tokens_in=estimated_tokens, price=price)
    estimate = worst_case_cost(
        price=price, prompt_tokens=estimated_tokens, max_output_tokens=0
    ) + device_cost(price=price, seconds=seconds, device=device)
    reservation = budget_reserve(
        team=team, user=user, api_key=api_key, estimate=estimate, description=f"embeddings on {model}"
    )
    job = job_start(
        kind="embeddings.create", team=team, created_by=user,
        params={"model": model, "texts": texts, "reservation_id": reservation.pk,
                "user_id": getattr(user, "pk", None), "api_key_id": getattr(api_key, "pk", None)},
    )
    deadline = time.monotonic() + (timeout_s or settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)
    while True:
        job.refresh_from_db()
        if job.is_finished or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if job.status != JobStatus.SUCCEEDED:
        raise ServiceError(f"embedding job {job.pk} {job.status}: {job.error or 'timed out'}", code="upstream_error")
    result = job.result
    # The vectors were only in transit: don't keep them in the job row.
    Job.objects.filter(pk=job.pk).update(result={"count": len(result["vectors"]), "tokens": result["tokens"]})
    return result


def embeddings_compute(*, job: Job) -> dict:
    """Runs in the worker: encode, meter into the ledger, settle the reservation."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import ApiKey
    from apps.costs.models import Reservation
    from workers.runtime.embedders import get_embedder

    params = job.params
    reservation = Reservation.objects.get(pk=params["reservation_id"])
    try:
        embedder = get_embedder(params["model"])
        started = time.perf_counter()
        vectors = embedder.encode(params["texts"])
        seconds = time.perf_counter() - started
        tokens = sum(len(ids) for ids in embedder.tokenizer(params["texts"], truncation=True)["input_ids"])
    except Exception:
        reservation_release(reservation=reservation)
        raise
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    record = usage_record(
        context=LedgerContext(
            team=job.team,
            user=get_user_model().objects.filter(pk=params.get("user_id")).first(),
            api_key=ApiKey.objects.filter(pk=params.get("api_key_id")).first(),
        ),
        stage=Stage.EMBED,
        model_name=EMBEDDING_MODELS[params["model"]],
        usage=Usage(
            prompt_tokens=tokens,
            gpu_seconds=to_decimal(round(seconds, 6)) if on_gpu else Decimal(0),
            cpu_seconds=Decimal(0) if on_gpu else to_decimal(round(seconds, 6)),
        ),
        price=price_current(model_name=EMBEDDING_MODELS[params["model"]]),
        latency_ms=int(seconds * 1000),
        reservation=reservation,
    )
    reservation_settle(reservation=reservation, actual=record.cost)
    return {"vectors": [[round(float(x), 7) for x in row] for row in vectors], "tokens": tokens}
