"""Pipelines with a fixed context: the offline prefill job and answering over the cached KV.

A pipeline's fixed context is `Pipeline.fixed_context` (a long text) or, when that is empty,
the documents of `Pipeline.fixed_context_corpus` concatenated (title, then the text rebuilt
from its chunks' character offsets). With a fixed context the pipeline skips retrieval: every
answer reads the whole context through the chosen attention backend
(`Pipeline.attention_backend`: full | squeezed | retrieval, options in `attention_options`).

- `fixed_context_prefill_start` reserves the prefill's worst-case cost against the team's
  budgets (402 before anything runs when it does not fit) and enqueues the `attention.prefill`
  job on the `gpu` queue; the job (`fixed_context_prefill_execute`) prefills the context once
  with the pipeline's local model into the KV store under DATA_ROOT/kv-cache and builds the
  backend's key index beside it, reporting progress on the Job row. Idempotent: a second run
  finds everything stored. Its compute is billed as one `prefill` ledger row (the context
  tokens prefilled, the device-seconds measured) that settles the job's reservation, once: a
  retry of a job already billed writes nothing.
- Answering is the engine's (`workers.rag.pipeline`, run by `services.query_run_execute`):
  only the user's tokens are prefilled; the ledger row counts the fixed context as cached
  tokens when it came from the store (as fresh ones when it was computed now, e.g. after an
  eviction). This module gives it the context text and the KV store.

No torch or faiss at module level: the engine (`workers.attention`) is imported in functions.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.core.services import job_start
from apps.costs.cost_model import device_cost, device_seconds_bound
from apps.costs.metering import endpoint_target
from apps.costs.models import EndpointKind, Reservation, ReservationStatus, UsageRecord
from apps.costs.money_format import money_str
from apps.costs.pricing import Usage, to_decimal, worst_case_cost
from apps.costs.services import (
    LedgerContext,
    PriceMissing,
    price_current,
    reservation_release,
    reservation_settle,
    usage_record,
)
from apps.costs.services.holds import hold_open
from apps.rag.models import Pipeline

logger = logging.getLogger(__name__)

PREFILL_JOB_KIND = "attention.prefill"
PREFILL_STAGE = "prefill"  # the ledger stage of the offline prefill's own compute
# The hold lives while the job waits in the gpu queue and runs (its time limit is an hour);
# an expired hold is taken again when the job starts, so the budget is checked before it runs.
PREFILL_RESERVATION_TTL_S = 2 * 3600


# --------------------------------------------------------------------------- reads


def pipeline_fixed_context_text(*, pipeline: Pipeline) -> str:
    """The pipeline's fixed context as one text ("" when it has none)."""
    if pipeline.fixed_context.strip():
        return pipeline.fixed_context
    if pipeline.fixed_context_corpus_id is None:
        return ""
    from apps.corpora.models import Chunk

    pieces: list[str] = []
    chunks = (
        Chunk.objects.filter(document__corpus_id=pipeline.fixed_context_corpus_id)
        .select_related("document")
        .order_by("document__created_at", "document_id", "ordinal")
    )
    current, text = None, ""
    for chunk in chunks.iterator():
        if chunk.document_id != current:
            if current is not None:
                pieces.append(text)
            current = chunk.document_id
            text = f"Title: {chunk.document.title or chunk.document.filename}\n"
            end = 0
        # Chunks overlap: append only what lies past the text rebuilt so far (offsets into the document).
        if chunk.char_end > end:
            skip = max(0, end - chunk.char_start)
            gap = "\n" if chunk.char_start > end and end else ""
            text += gap + chunk.text[skip:]
            end = chunk.char_end
    if current is not None:
        pieces.append(text)
    return "\n\n".join(p.strip() for p in pieces)


def fixed_context_token_estimate(*, pipeline: Pipeline) -> int:
    """The fixed context's tokens in the generator's tokenizer, for worst-case reservations (0 without one).

    Exact for a local model (its tokenizer over the text it will prefill), + a few tokens for the
    edges where the context meets the rest of the prompt; a corpus's text is rebuilt to count it.
    """
    from apps.costs.tokens import text_tokens_bound

    text = pipeline_fixed_context_text(pipeline=pipeline)
    if not text:
        return 0
    return text_tokens_bound(pipeline.model_endpoint, text) + 8


# --------------------------------------------------------------------------- the engine's inputs


def kv_store() -> Any:
    """The KV store under DATA_ROOT/kv-cache: prefilled fixed contexts and superposition's documents."""
    from indexes.kv_store import DEFAULT_MAX_BYTES, KVStore

    return KVStore(
        Path(settings.DATA_ROOT) / "kv-cache",
        max_bytes=int(getattr(settings, "PARSIMONY_KV_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES)),
    )


def fixed_context_max_tokens() -> int | None:
    """PARSIMONY_FIXED_CONTEXT_MAX_TOKENS: the most context tokens prefilled (None: the model's window)."""
    limit = getattr(settings, "PARSIMONY_FIXED_CONTEXT_MAX_TOKENS", None)
    return int(limit) if limit else None


def _engine_config() -> Any:
    from workers.attention.fixed_context import FixedContextConfig

    return FixedContextConfig(max_context_tokens=fixed_context_max_tokens())


def _local_model(pipeline: Pipeline) -> Any:
    from workers.runtime.local_lm import LoadedModel

    endpoint = pipeline.model_endpoint
    target = endpoint_target(endpoint) if endpoint.kind == EndpointKind.LOCAL else None
    if not isinstance(target, LoadedModel):
        raise ValidationFailed(
            f"a fixed context is answered by a local model; {endpoint.name!r} is not one"
        )
    return target


def fixed_context_validate(*, values: dict[str, Any], endpoint_kind: str | None) -> dict[str, str]:
    """Field errors for the attention options (unknown backend options, sparse backends on remote models)."""
    from workers.attention import BACKENDS, backend_config

    errors: dict[str, str] = {}
    backend = values.get("attention_backend", "full")
    options = values.get("attention_options") or {}
    if not isinstance(options, dict):
        errors["attention_options"] = "attention options must be an object"
    elif backend in BACKENDS:  # an unknown name is reported by the registry check
        try:
            backend_config(backend, options)
        except (TypeError, ValueError) as exc:
            errors["attention_options"] = str(exc)
    if endpoint_kind is not None and endpoint_kind != EndpointKind.LOCAL and backend != "full":
        errors["attention_backend"] = (
            f"attention backend {backend!r} runs the model itself and needs a local model endpoint"
        )
    return errors


# --------------------------------------------------------------------------- the prefill job


def fixed_context_prefill_estimate(*, pipeline: Pipeline) -> Decimal:
    """The most the prefill job can cost: every context token fresh, the model's whole wall time.

    The context is capped at the endpoint's context window (the engine truncates to what fits)
    and at PARSIMONY_FIXED_CONTEXT_MAX_TOKENS when set. Raises PriceMissing without a price.
    """
    endpoint = pipeline.model_endpoint
    tokens = fixed_context_token_estimate(pipeline=pipeline)
    limit = getattr(settings, "PARSIMONY_FIXED_CONTEXT_MAX_TOKENS", None)
    caps = [endpoint.context_window or tokens, int(limit) if limit else tokens]
    price = price_current(model_name=endpoint.price_name)
    prompt_tokens = min(tokens, *caps)
    # Device time: the cost model's prefill bound, at the device of the worker that would run it.
    seconds, device = device_seconds_bound(model=endpoint.price_name, tokens_in=prompt_tokens, price=price)
    return worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=0) + device_cost(
        price=price, seconds=seconds, device=device
    )


def _prefill_reserve(*, pipeline: Pipeline, user=None, api_key=None) -> Reservation:
    """Hold the prefill's worst case against the team's budgets (BudgetExceeded, 402, when it does not fit)."""
    return hold_open(
        path="kv_prefill",
        context=LedgerContext(team=pipeline.team, user=user, api_key=api_key),
        estimate=fixed_context_prefill_estimate(pipeline=pipeline),
        description=f"{PREFILL_STAGE} of pipeline {pipeline.name} on {pipeline.model_endpoint.name}",
        ttl_s=PREFILL_RESERVATION_TTL_S,
    ).reservation


def fixed_context_prefill_start(
    *, pipeline: Pipeline, user=None, backends: list[str] | None = None, api_key=None
) -> Job:
    """Reserve the prefill's worst case and enqueue the offline prefill (+ index builds) of the
    pipeline's fixed context. -> the Job (progress in thousandths).

    Refuses (ValidationFailed, 400) a pipeline without a fixed context, a remote endpoint and
    unknown backend names; (BudgetExceeded, 402) when a budget of the team, the user or the API
    key cannot cover the worst case. Nothing is enqueued then.
    """
    if not pipeline.has_fixed_context:
        raise ValidationFailed(
            f"pipeline {pipeline.name!r} has no fixed context to prefill",
            code="no_fixed_context",
            detail={"fields": {"fixed_context": "set a fixed context text or corpus first"}},
        )
    if pipeline.model_endpoint.kind != EndpointKind.LOCAL:
        raise ValidationFailed(
            "a fixed context is prefilled with a local model; this pipeline's endpoint is remote",
            code="remote_endpoint",
            detail={"fields": {"model": pipeline.model_endpoint.name}},
        )
    params: dict[str, Any] = {"pipeline_id": pipeline.pk}
    if backends:
        from workers.attention import BACKENDS

        unknown = sorted(set(backends) - set(BACKENDS))
        if unknown:
            raise ValidationFailed(
                f"unknown attention backends {unknown} (valid: {', '.join(sorted(BACKENDS))})",
                code="unknown_backend",
                detail={"fields": {"backends": f"valid: {', '.join(sorted(BACKENDS))}"}},
            )
        params["backends"] = list(backends)
    with transaction.atomic():
        reservation = _prefill_reserve(pipeline=pipeline, user=user, api_key=api_key)
        params["reservation_id"] = reservation.pk
        return job_start(kind=PREFILL_JOB_KIND, team=pipeline.team, created_by=user, params=params, total=1000)


def _release_quietly(reservation: Reservation | None) -> None:
    if reservation is not None and reservation.status == ReservationStatus.HELD:
        try:
            reservation_release(reservation=reservation)
        except Exception:  # never hide the job's own error behind the release's
            logger.exception("could not release reservation %s", reservation.pk)


def _prefill_reservation(*, pipeline: Pipeline, params: dict[str, Any], job_id: int | None) -> Reservation | None:
    """The job's hold; a new one when it is gone (expired while queued, released by a failed attempt).

    None when the job was billed already (its reservation is settled): a retry bills nothing.
    A new hold checks the budgets again, so an over-budget team's job fails here, before it runs.
    """
    reservation = None
    if params.get("reservation_id") is not None:
        reservation = Reservation.objects.select_related("user", "api_key").filter(pk=params["reservation_id"]).first()
    if reservation is not None and reservation.status == ReservationStatus.SETTLED:
        return None
    if reservation is not None and reservation.status == ReservationStatus.HELD:
        return reservation
    user = reservation.user if reservation is not None else None
    if user is None and job_id is not None:
        job = Job.objects.select_related("created_by").filter(pk=job_id).first()
        user = job.created_by if job is not None else None
    renewed = _prefill_reserve(pipeline=pipeline, user=user, api_key=reservation.api_key if reservation else None)
    if job_id is not None:  # a later retry finds (and settles) this one
        Job.objects.filter(pk=job_id).update(params={**params, "reservation_id": renewed.pk})
    return renewed


def _prefill_seconds(result: dict[str, Any]) -> float:
    """The compute the engine did now: the prefill (when the KV was not stored) and the index builds."""
    seconds = float(result.get("prefill_s") or 0.0) if result.get("kv_computed") else 0.0
    for index in (result.get("indexes") or {}).values():
        if index.get("computed"):
            seconds += float(index.get("build_s") or 0.0)
    return seconds


def fixed_context_prefill_bill(
    *, pipeline: Pipeline, reservation: Reservation, result: dict[str, Any], on_gpu: bool
) -> UsageRecord | None:
    """One `prefill` ledger row for the compute in ``result``, settling ``reservation``, exactly once.

    prompt_tokens: the context tokens prefilled now (0 when the KV came from the store);
    GPU- or CPU-seconds: the engine's measured prefill and index-build time. Nothing computed:
    no row, the hold is released. Idempotent per reservation (the row and the settlement commit
    together, under the reservation's row lock): a second call returns the first row.
    """
    endpoint = pipeline.model_endpoint
    tokens = int(result.get("context_tokens") or 0) if result.get("kv_computed") else 0
    seconds = _prefill_seconds(result)
    with transaction.atomic():
        locked = (
            Reservation.objects.select_for_update(of=("self",))
            .select_related("user", "api_key")
            .get(pk=reservation.pk)
        )
        billed = UsageRecord.objects.filter(reservation_id=locked.pk, stage=PREFILL_STAGE).first()
        if billed is not None or locked.status == ReservationStatus.SETTLED:
            return billed
        if tokens == 0 and seconds <= 0:
            _release_quietly(locked)
            return None
        try:
            price = price_current(model_name=endpoint.price_name)
        except PriceMissing:
            logger.warning("no price for %s: prefill usage recorded at zero cost", endpoint.price_name)
            price = None
        share = to_decimal(round(seconds, 6))
        record = usage_record(
            context=LedgerContext(
                team=pipeline.team, user=locked.user, api_key=locked.api_key, pipeline_name=pipeline.name
            ),
            stage=PREFILL_STAGE,
            model_name=endpoint.price_name,
            usage=Usage(
                prompt_tokens=tokens,
                gpu_seconds=share if on_gpu else Decimal(0),
                cpu_seconds=Decimal(0) if on_gpu else share,
            ),
            price=price,
            latency_ms=int(1000 * seconds),
            endpoint=endpoint,
            reservation=locked,
        )
        reservation_settle(reservation=locked, actual=record.cost)
    return record


def fixed_context_prefill_execute(*, params: dict[str, Any], progress=None) -> dict[str, Any]:
    """The job's body (in a worker): prefill, store, build indexes, bill. Idempotent; progress in 1/1000.

    ``progress`` is the task's Progress (its ``job_id`` lets a renewed reservation be kept on the job).
    """
    job_id = getattr(progress, "job_id", None)
    pipeline = (
        Pipeline.objects.select_related("model_endpoint", "team").filter(pk=params.get("pipeline_id")).first()
    )
    if pipeline is None:
        logger.warning("pipeline %s does not exist; nothing to prefill", params.get("pipeline_id"))
        held = Reservation.objects.filter(pk=params.get("reservation_id"), status=ReservationStatus.HELD).first()
        _release_quietly(held)
        return {"skipped": "pipeline deleted"}
    text = pipeline_fixed_context_text(pipeline=pipeline)
    if not text.strip():
        held = Reservation.objects.filter(pk=params.get("reservation_id"), status=ReservationStatus.HELD).first()
        _release_quietly(held)
        raise ValidationFailed(f"pipeline {pipeline.name!r} has no fixed context to prefill")
    reservation = _prefill_reservation(pipeline=pipeline, params=params, job_id=job_id)
    from workers.attention.fixed_context import prepare_fixed_context

    names = params.get("backends") or [pipeline.attention_backend]
    backends = [(name, pipeline.attention_options if name == pipeline.attention_backend else {}) for name in names]

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(int(1000 * min(1.0, fraction)), 1000, message)

    try:
        model = _local_model(pipeline)
        result = prepare_fixed_context(
            model, kv_store(), system_prompt=pipeline.system_prompt, context_text=text,
            backends=backends, config=_engine_config(), progress=report,
        )
    except BaseException:
        _release_quietly(reservation)
        raise
    if reservation is None:  # billed by an earlier attempt of this job: report that row, bill nothing
        record = UsageRecord.objects.filter(reservation_id=params.get("reservation_id"), stage=PREFILL_STAGE).first()
    else:
        record = fixed_context_prefill_bill(
            pipeline=pipeline, reservation=reservation, result=result,
            on_gpu=str(getattr(model, "device", "cpu")).startswith("cuda"),
        )
    billed = {"usage_record_id": record.pk, "cost": money_str(record.cost)} if record is not None else None
    return {"pipeline_id": pipeline.pk, **result, "billed": billed}


__all__ = [
    "PREFILL_JOB_KIND",
    "PREFILL_STAGE",
    "fixed_context_prefill_bill",
    "fixed_context_prefill_estimate",
    "fixed_context_prefill_execute",
    "fixed_context_max_tokens",
    "fixed_context_prefill_start",
    "fixed_context_token_estimate",
    "fixed_context_validate",
    "kv_store",
    "pipeline_fixed_context_text",
]
