"""Pipelines with a fixed context: the offline prefill job and answering over the cached KV.

A pipeline's fixed context is `Pipeline.fixed_context` (a long text) or, when that is empty,
the documents of `Pipeline.fixed_context_corpus` concatenated (title, then the text rebuilt
from its chunks' character offsets). With a fixed context the pipeline skips retrieval: every
answer reads the whole context through the chosen attention backend
(`Pipeline.attention_backend`: full | squeezed | retrieval, options in `attention_options`).

- `fixed_context_prefill_start` enqueues the `attention.prefill` job on the `gpu` queue; the
  job (`fixed_context_prefill_execute`) prefills the context once with the pipeline's local
  model into the KV store under DATA_ROOT/kv-cache and builds the backend's key index beside
  it, reporting progress on the Job row. Idempotent: a second run finds everything stored.
- `fixed_context_run` is the query-time branch of `services._run_pipeline`: only the user's
  tokens are prefilled; the ledger row counts the fixed context as cached tokens when it came
  from the store (as fresh ones when it had to be computed now, e.g. after an eviction).

No torch or faiss at module level: the engine (`workers.attention`) is imported in functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.core.errors import ValidationFailed
from apps.core.services import job_start
from apps.costs.metering import endpoint_target
from apps.costs.models import EndpointKind, Stage
from apps.costs.pricing import Usage, to_decimal
from apps.costs.services import LedgerContext, price_current, usage_record
from apps.rag.models import Pipeline, QueryRun

logger = logging.getLogger(__name__)

PREFILL_JOB_KIND = "attention.prefill"


def _estimate_tokens(text: str) -> int:
    return -(-len(text) // 3)  # the web process holds no tokenizer: 1 token per 3 characters, rounded up


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
    """A conservative token count of the fixed context, for worst-case reservations (0 without one)."""
    if pipeline.fixed_context.strip():
        return _estimate_tokens(pipeline.fixed_context)
    if pipeline.fixed_context_corpus_id is None:
        return 0
    from django.db.models import Sum

    from apps.corpora.models import Document

    counted = Document.objects.filter(corpus_id=pipeline.fixed_context_corpus_id).aggregate(n=Sum("token_count"))["n"]
    # 2x: the embedding tokenizer's count vs the generator's, plus titles.
    return 2 * int(counted or 0) + 64


# --------------------------------------------------------------------------- the engine's inputs


def _kv_store() -> Any:
    from indexes.kv_store import DEFAULT_MAX_BYTES, KVStore

    return KVStore(
        Path(settings.DATA_ROOT) / "kv-cache",
        max_bytes=int(getattr(settings, "PARSIMONY_KV_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES)),
    )


def _engine_config() -> Any:
    from workers.attention.fixed_context import FixedContextConfig

    limit = getattr(settings, "PARSIMONY_FIXED_CONTEXT_MAX_TOKENS", None)
    return FixedContextConfig(max_context_tokens=int(limit) if limit else None)


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


def fixed_context_prefill_start(*, pipeline: Pipeline, user=None, backends: list[str] | None = None):
    """Enqueue the offline prefill (+ index builds) of the pipeline's fixed context. -> the Job."""
    if not pipeline.has_fixed_context:
        raise ValidationFailed(f"pipeline {pipeline.name!r} has no fixed context to prefill")
    if pipeline.model_endpoint.kind != EndpointKind.LOCAL:
        raise ValidationFailed("a fixed context is prefilled with a local model; this pipeline's endpoint is remote")
    params: dict[str, Any] = {"pipeline_id": pipeline.pk}
    if backends:
        from workers.attention import BACKENDS

        unknown = sorted(set(backends) - set(BACKENDS))
        if unknown:
            raise ValidationFailed(f"unknown attention backends {unknown} (valid: {', '.join(sorted(BACKENDS))})")
        params["backends"] = list(backends)
    return job_start(kind=PREFILL_JOB_KIND, team=pipeline.team, created_by=user, params=params, total=1000)


def fixed_context_prefill_execute(*, params: dict[str, Any], progress=None) -> dict[str, Any]:
    """The job's body (in a worker): prefill, store, build indexes. Idempotent; progress in 1/1000."""
    pipeline = Pipeline.objects.select_related("model_endpoint").filter(pk=params.get("pipeline_id")).first()
    if pipeline is None:
        logger.warning("pipeline %s does not exist; nothing to prefill", params.get("pipeline_id"))
        return {"skipped": "pipeline deleted"}
    text = pipeline_fixed_context_text(pipeline=pipeline)
    if not text.strip():
        raise ValidationFailed(f"pipeline {pipeline.name!r} has no fixed context to prefill")
    from workers.attention.fixed_context import prepare_fixed_context

    names = params.get("backends") or [pipeline.attention_backend]
    backends = [(name, pipeline.attention_options if name == pipeline.attention_backend else {}) for name in names]

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(int(1000 * min(1.0, fraction)), 1000, message)

    result = prepare_fixed_context(
        _local_model(pipeline), _kv_store(), system_prompt=pipeline.system_prompt, context_text=text,
        backends=backends, config=_engine_config(), progress=report,
    )
    return {"pipeline_id": pipeline.pk, **result}


# --------------------------------------------------------------------------- answering


def fixed_context_run(*, run: QueryRun, context: LedgerContext, stream, progress) -> dict[str, Any]:
    """Answer a run of a pipeline with a fixed context (the branch of services._run_pipeline)."""
    from apps.costs.metering import MeteredCall
    from apps.rag.services import _baseline_generation_cost
    from workers.attention.fixed_context import answer

    pipeline = run.pipeline
    endpoint = pipeline.model_endpoint
    progress(1, 3, "loading the fixed context")
    model = _local_model(pipeline)
    text = pipeline_fixed_context_text(pipeline=pipeline)
    if not text.strip():
        raise ValidationFailed(f"pipeline {pipeline.name!r} has an empty fixed context")
    price = price_current(model_name=endpoint.price_name)
    progress(2, 3, "generating")
    result = answer(
        model,
        store=_kv_store(),
        system_prompt=pipeline.system_prompt,
        context_text=text,
        question=run.question,
        backend=pipeline.attention_backend,
        options=pipeline.attention_options or {},
        max_output_tokens=max(1, min(run.max_output_tokens, endpoint.max_output_tokens)),
        wall_time_limit_s=settings.PARSIMONY_MODEL_WALL_TIME_S,
        on_token=stream,
        config=_engine_config(),
    )
    record = usage_record(
        context=context,
        stage=Stage.GENERATE,
        model_name=endpoint.price_name,
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_tokens=result.cached_tokens,
            gpu_seconds=to_decimal(result.gpu_s),
            cpu_seconds=to_decimal(0.0 if result.gpu_s else result.compute_s),
        ),
        price=price,
        latency_ms=int(result.wall_s * 1000),
        finish_reason=result.finish_reason,
        endpoint=endpoint,
        reservation=run.reservation,
    )
    call = MeteredCall(text=result.text, finish_reason=result.finish_reason, record=record)
    # The baseline: the same prompt with nothing cached (the whole fixed context prefilled per question).
    baseline = _baseline_generation_cost(call.record, result.prompt_tokens)
    return {
        "answer": call.text,
        "finish_reason": call.finish_reason,
        "citations": [],
        "baseline": baseline,
        "context_tokens_before": result.context_tokens + result.truncated_tokens,
        "context_tokens_after": result.context_tokens,
    }


__all__ = [
    "PREFILL_JOB_KIND",
    "fixed_context_prefill_execute",
    "fixed_context_prefill_start",
    "fixed_context_run",
    "fixed_context_token_estimate",
    "fixed_context_validate",
    "pipeline_fixed_context_text",
]
