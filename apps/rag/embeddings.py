"""Embeddings for the OpenAI-compatible API: budgeted, metered, computed on the gpu queue.

Cost path ``embeddings_api``: the request reserves a hold (the cost model's bound of the texts'
tokens, counted with the model's tokenizer) before the job exists; the worker resumes it, writes the
``embed`` row under it and settles.
"""

from __future__ import annotations

import time
from decimal import Decimal

from django.conf import settings

from apps.core.errors import ServiceError, ValidationFailed
from apps.core.models import Job, JobStatus
from apps.core.services import job_start
from apps.costs.models import Stage
from apps.costs.pricing import Usage, to_decimal
from apps.costs.services import LedgerContext, price_current
from apps.costs.services.holds import hold_open, hold_resume

EMBEDDING_MODELS = {"all-MiniLM-L6-v2": "local/all-minilm-l6-v2"}


def embeddings_bound(*, model: str, texts: list[str]) -> Decimal:
    """What a request reserves: the cost model's bound of embedding the texts' tokens, counted exactly
    with the embedding model's own tokenizer, as the worker counts when it bills."""
    from apps.corpora.services.embedding import embedding_bound
    from apps.costs.tokens import embedding_tokens

    tokens = embedding_tokens(model, texts)
    return embedding_bound(model_name=model, tokens=tokens, price=price_current(model_name=EMBEDDING_MODELS[model]))


def embeddings_create(
    *, team, model: str, texts: list[str], user=None, api_key=None, timeout_s: float | None = None
) -> dict:
    if model not in EMBEDDING_MODELS:
        raise ValidationFailed(
            f"unknown embedding model {model!r} (available: {', '.join(EMBEDDING_MODELS)})", code="model_not_found"
        )
    hold = hold_open(
        path="embeddings_api",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=embeddings_bound(model=model, texts=texts),
        description=f"embeddings on {model}",
    )
    try:
        job = job_start(
            kind="embeddings.create", team=team, created_by=user,
            params={"model": model, "texts": texts, "reservation_id": hold.reservation.pk,
                    "user_id": getattr(user, "pk", None), "api_key_id": getattr(api_key, "pk", None)},
        )
    except BaseException:
        hold.release()
        raise
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
    context = LedgerContext(
        team=job.team,
        user=get_user_model().objects.filter(pk=params.get("user_id")).first(),
        api_key=ApiKey.objects.filter(pk=params.get("api_key_id")).first(),
    )
    hold = hold_resume(
        reservation=Reservation.objects.get(pk=params["reservation_id"]), context=context, path="embeddings_api"
    )
    try:
        embedder = get_embedder(params["model"])
        started = time.perf_counter()
        vectors = embedder.encode(params["texts"])
        seconds = time.perf_counter() - started
        tokens = sum(len(ids) for ids in embedder.tokenizer(params["texts"], truncation=True)["input_ids"])
    except Exception:
        hold.release()
        raise
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    hold.record(
        stage=Stage.EMBED,
        model_name=EMBEDDING_MODELS[params["model"]],
        usage=Usage(
            prompt_tokens=tokens,
            gpu_seconds=to_decimal(round(seconds, 6)) if on_gpu else Decimal(0),
            cpu_seconds=Decimal(0) if on_gpu else to_decimal(round(seconds, 6)),
        ),
        price=price_current(model_name=EMBEDDING_MODELS[params["model"]]),
        latency_ms=int(seconds * 1000),
    )
    hold.settle()
    return {"vectors": [[round(float(x), 7) for x in row] for row in vectors], "tokens": tokens}
