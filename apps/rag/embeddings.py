"""Embeddings for the OpenAI-compatible API: budgeted, metered, computed on the gpu queue.

Cost path ``embeddings_api``: the request reserves a hold (the cost model's bound of encoding the
texts: their tokens counted with the model's tokenizer, padded per batch) before the job exists;
the worker resumes it, makes it cover its own bound (its measured speed, its batches), writes the
``embed`` row under it and settles.
"""

from __future__ import annotations

import time
from decimal import Decimal

from django.conf import settings

from apps.core.errors import ServiceError, ValidationFailed
from apps.core.models import Job, JobStatus
from apps.core.services import job_start
from apps.costs.defaults import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.services import LedgerContext, price_current
from apps.costs.services.holds import hold_open, hold_resume

EMBEDDING_MODELS = {LOCAL_EMBEDDING_MODEL: LOCAL_EMBEDDING_PRICE_NAME}


def embeddings_bound(*, model: str, texts: list[str]) -> Decimal:
    """What a request reserves: the cost model's bound of one encode call over the texts, their tokens
    counted exactly with the embedding model's own tokenizer (as the worker bills them) and padded per
    batch as the embedder pads them. Measured here first when this process runs the job (no broker)."""
    from apps.corpora.services.embedding import embeds_in_this_process, texts_bound

    return texts_bound(
        model_name=model, texts=texts, slab=None, price=price_current(model_name=EMBEDDING_MODELS[model]),
        here=embeds_in_this_process(job=True),
    )


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
    from apps.corpora.services.embedding import texts_embed_billed
    from apps.costs.models import Reservation

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
        # The request reserved for the slowest worker it could not name: this one's own bound (its speed,
        # its batches) must fit too before it runs (a refusal fails the job; nothing is billed).
        vectors, record = texts_embed_billed(model_name=params["model"], texts=params["texts"], context=context,
                                             hold=hold)
    finally:
        hold.settle()  # to the embed row; released when nothing was billed
    return {"vectors": [[round(float(x), 7) for x in row] for row in vectors], "tokens": record.prompt_tokens}
