"""Writes for pipelines and query runs: persistence, reservation and settlement around the engine.

query_run_start (web process): validate, reserve the worst-case cost against every budget,
create the QueryRun and its Job, enqueue on the `gpu` queue. query_run_execute (worker): load
the run, hand the engine (``workers.rag.pipeline``) its hooks (search, model, ledger rows, the
answer stream into the row), then write the outcome, settle the reservation to the ledger's
total and record the savings against naive RAG with the same model.
"""

from __future__ import annotations

import logging
import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.core.errors import JobCancelled, ValidationFailed
from apps.core.jobs import JobEnd
from apps.core.services import job_run_end, job_start
from apps.core.streaming import AnswerStream
from apps.costs.baseline import naive_generation_cost
from apps.costs.billing import generation_bill
from apps.costs.metering import (
    MeteredCall,
    call_estimate,
    endpoint_loaded,
    endpoint_resolve,
    endpoint_target,
    generation_allowance,
    model_call,
)
from apps.costs.models import ZERO, EndpointKind, ModelEndpoint, Stage, UsageRecord
from apps.costs.pricing import (
    Usage,
    money,
    to_decimal,
    worst_case_cost,
)
from apps.costs.services import (
    LedgerContext,
    price_current,
    reservation_close,
    reservation_settle,
    usage_record,
)
from apps.costs.services.holds import hold_open, hold_resume
from apps.costs.services.ledger import device_seconds_within
from apps.costs.tokens import (
    embedding_tokens,
    endpoint_context_window,
    prompt_check,
    prompt_tokens_bound,
    text_tokens_bound,
)
from apps.rag.fixed_context import (
    fixed_context_max_tokens,
    fixed_context_validate,
    kv_store,
    pipeline_fixed_context_text,
)
from apps.rag.models import BaselineKind, Pipeline, QueryRun, QueryStatus, Retriever
from apps.rag.selectors import pipeline_best_hit_scores, pipeline_option_names, query_queue

logger = logging.getLogger(__name__)

EMBEDDING_PRICE_NAME = "local/all-minilm-l6-v2"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # what EMBEDDING_PRICE_NAME prices


# --------------------------------------------------------------------------- pipelines


# compression_target: a share of the context's tokens (0 < target ≤ 1) or a whole token budget in this range.
COMPRESSION_BUDGET_MIN, COMPRESSION_BUDGET_MAX = 16, 1_000_000


def compression_target_problem(value: Any) -> str | None:
    """Why ``value`` is not a compression target (None when it is one): a share in (0, 1], or a
    whole number of tokens from COMPRESSION_BUDGET_MIN to COMPRESSION_BUDGET_MAX."""
    rule = (
        f"the compression target must be a share of the context's tokens (0 < target ≤ 1) or a whole token budget "
        f"from {COMPRESSION_BUDGET_MIN} to {COMPRESSION_BUDGET_MAX:,}"
    )
    try:
        target = float(value)
    except (TypeError, ValueError, OverflowError):
        return f"{rule}; got {value!r}"
    if not math.isfinite(target) or target <= 0:
        return f"{rule}; got {value!r}"
    if target <= 1:
        return None
    if target != int(target) or not COMPRESSION_BUDGET_MIN <= target <= COMPRESSION_BUDGET_MAX:
        return f"{rule}; got {value!r}"
    return None


def pipeline_validate(*, values: dict[str, Any], model_endpoint: ModelEndpoint | None = None) -> None:
    """Reject unknown method names (listing the valid ones), nonsensical numbers, and strategies
    that run the model themselves (superposition) on a remote endpoint."""
    from workers.prompting import STRATEGIES

    errors: dict[str, str] = {}
    for field, valid in pipeline_option_names().items():
        if field in values and values[field] not in valid:
            errors[field] = f"unknown {field.replace('_', ' ')} {values[field]!r} (valid: {', '.join(valid)})"
    strategy = STRATEGIES.get(values.get("prompting_strategy", ""))
    if (
        model_endpoint is not None
        and getattr(strategy, "runs_model", False)
        and model_endpoint.kind != EndpointKind.LOCAL
    ):
        errors["prompting_strategy"] = (
            f"prompting strategy {values['prompting_strategy']!r} runs the model itself and needs a local model; "
            f"{model_endpoint.name!r} is a remote endpoint"
        )
    options = values.get("prompting_options") or {}
    if not isinstance(options, dict):
        errors["prompting_options"] = "prompting options must be an object"
    elif values.get("prompting_strategy", "naive") in STRATEGIES:  # an unknown name is reported above
        from workers.prompting import strategy_config

        try:
            strategy_config(values.get("prompting_strategy", "naive"), options)
        except ValueError as exc:
            errors["prompting_options"] = str(exc)
    errors.update(fixed_context_validate(values=values, endpoint_kind=model_endpoint.kind if model_endpoint else None))
    if getattr(strategy, "extractive", False):
        errors.update(_extractive_validate(values))
    errors.update(_ranges_validate(values))
    if "decoding_options" in values:
        from workers.runtime.decoding import decoding_settings

        try:
            model = (model_endpoint.source or model_endpoint.name) if model_endpoint else ""
            decoding_settings(model, values["decoding_options"])
        except ValueError as exc:
            errors["decoding_options"] = str(exc)
    if errors:
        raise ValidationFailed("; ".join(errors.values()), detail={"fields": errors})


def _ranges_validate(values: dict[str, Any]) -> dict[str, str]:
    """The numeric fields' ranges: {field: problem}."""
    errors: dict[str, str] = {}
    if "top_k" in values and not 1 <= int(values["top_k"]) <= 100:
        errors["top_k"] = "top_k must be between 1 and 100"
    if "compression_target" in values:
        problem = compression_target_problem(values["compression_target"])
        if problem:
            errors["compression_target"] = problem
    if "max_output_tokens" in values and not 1 <= int(values["max_output_tokens"]) <= 32_768:
        errors["max_output_tokens"] = "max_output_tokens must be between 1 and 32768"
    abstain = values.get("abstain_below")
    if abstain is not None and not (isinstance(abstain, int | float) and 0 <= abstain <= 1):
        errors["abstain_below"] = f"abstain_below must be a number between 0 and 1 (or empty: never); got {abstain!r}"
    return errors


def _extractive_validate(values: dict[str, Any]) -> dict[str, str]:
    """An extractive answer quotes the retrieved passages as they are: it needs a retriever, and neither
    compresses them nor reads a fixed context (which a model answers)."""
    errors = {}
    name = values["prompting_strategy"]
    if values.get("compression_method", "none") != "none":
        errors["compression_method"] = (f"prompting strategy {name!r} quotes the retrieved passages as they are: "
                                        "set compression to none")
    if values.get("retriever") == Retriever.NONE:
        errors["retriever"] = f"prompting strategy {name!r} quotes retrieved passages: pick a retriever"
    if str(values.get("fixed_context") or "").strip() or values.get("fixed_context_corpus") is not None:
        errors["fixed_context"] = f"prompting strategy {name!r} quotes retrieved passages, not a fixed context"
    return errors


def _strategy_extractive(name: str) -> bool:
    from workers.prompting import STRATEGIES

    return bool(getattr(STRATEGIES.get(name), "extractive", False))


def pipeline_extractive(pipeline: Pipeline | None) -> bool:
    """Whether ``pipeline`` answers by quoting its passages (no generation: ``extractive_answer``)."""
    return pipeline is not None and _strategy_extractive(pipeline.prompting_strategy)


PIPELINE_FIELDS = (
    "description", "retriever", "top_k", "compression_method", "compression_target",
    "prompting_strategy", "prompting_options", "attention_backend", "max_output_tokens", "system_prompt",
    "attention_options", "fixed_context", "fixed_context_corpus", "decoding_options",
    "abstain_below", "answer_cache", "cascade", "history_token_budget",
)


def _corpora_validate(*, values: dict[str, Any], corpora: list) -> None:
    """A pipeline answers from its corpora: it needs one, unless it is explicitly retrieval-free
    (retriever "none": the model alone) or answers over a fixed context."""
    fixed = bool(str(values.get("fixed_context") or "").strip()) or values.get("fixed_context_corpus") is not None
    if values.get("retriever") == Retriever.NONE:
        if corpora:
            raise ValidationFailed(
                "a retrieval-free pipeline (retriever \"none\") searches no corpus: remove its corpora or pick "
                "a retriever (dense, bm25 or hybrid)", detail={"fields": {"corpora": "must be empty"}},
            )
        return
    if not corpora and not fixed:
        raise ValidationFailed(
            "a pipeline needs at least one corpus to retrieve from; pick one, or set retriever \"none\" for a "
            "retrieval-free pipeline (the model answers alone)",
            code="corpus_required", detail={"fields": {"corpora": "at least one corpus is required"}},
        )


@transaction.atomic
def pipeline_save(
    *,
    team,
    name: str,
    model_endpoint: ModelEndpoint | str,
    corpora: list | None = None,
    pipeline: Pipeline | None = None,
    created_by=None,
    **values: Any,
) -> Pipeline:
    unknown = set(values) - set(PIPELINE_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown pipeline options: {', '.join(sorted(unknown))}")
    if isinstance(model_endpoint, str):
        model_endpoint = endpoint_resolve(team=team, name=model_endpoint)
    is_cascade = bool(values["cascade"]) if "cascade" in values else (pipeline is not None and pipeline.is_cascade)
    if values.get("cascade"):  # a cascade answers with its tiers (apps.rag.cascade): its endpoint is the last's
        from apps.rag.cascade import cascade_config_normalize

        values["cascade"], model_endpoint = cascade_config_normalize(team=team, pipeline=pipeline,
                                                                     config=values["cascade"])
    current = {"prompting_strategy": pipeline.prompting_strategy, "prompting_options": pipeline.prompting_options,
               "attention_backend": pipeline.attention_backend,
               "attention_options": pipeline.attention_options} if pipeline is not None else {}
    if pipeline is not None and _strategy_extractive(values.get("prompting_strategy", pipeline.prompting_strategy)):
        # What an extractive answer rules out (compression, no retriever, a fixed context) may be set already.
        current.update(compression_method=pipeline.compression_method, retriever=pipeline.retriever,
                       fixed_context=pipeline.fixed_context, fixed_context_corpus=pipeline.fixed_context_corpus)
    pipeline_validate(values={**current, **values}, model_endpoint=model_endpoint)
    kept = {"retriever": pipeline.retriever, "fixed_context": pipeline.fixed_context,
            "fixed_context_corpus": pipeline.fixed_context_corpus} if pipeline is not None else {}
    _corpora_validate(
        values={"retriever": Retriever.NONE} if is_cascade else {
            "retriever": Pipeline._meta.get_field("retriever").default, **kept, **values},
        corpora=[] if is_cascade else (
            list(corpora) if corpora is not None else (list(pipeline.corpora.all()) if pipeline else [])),
    )
    if model_endpoint.team_id not in (None, team.pk):
        raise ValidationFailed("that model endpoint belongs to another team")
    for corpus in [*(corpora or []), *([values["fixed_context_corpus"]] if values.get("fixed_context_corpus") else [])]:
        if corpus.team_id != team.pk:
            raise ValidationFailed("a pipeline can only use its own team's corpora")
    name = name.strip()
    if not name:
        raise ValidationFailed("a pipeline needs a name")
    clash = Pipeline.objects.filter(team=team, name=name)
    if pipeline is not None:
        clash = clash.exclude(pk=pipeline.pk)
    if clash.exists():
        raise ValidationFailed(f"the team already has a pipeline called {name!r}", code="duplicate")
    pipeline = pipeline or Pipeline(team=team, created_by=created_by if getattr(created_by, "pk", None) else None)
    pipeline.name = name
    pipeline.model_endpoint = model_endpoint
    for key, value in values.items():
        setattr(pipeline, key, value)
    pipeline.save()
    if corpora is not None:
        pipeline.corpora.set(corpora)
    return pipeline


def pipeline_delete(*, pipeline: Pipeline) -> None:
    from apps.rag.cascade import cascades_using

    users = cascades_using(pipeline=pipeline)
    if users:
        raise ValidationFailed(f"{pipeline.name!r} is a tier of cascade {users[0].name!r}: remove it there first",
                               code="in_use")
    pipeline.delete()


# --------------------------------------------------------------------------- starting a query


# The prompting strategies' instruction text and framing ("Context:", "Question:", separators): well
# above the longest instruction in workers/prompting.
_PROMPT_FRAMING_TOKENS = 128


def _query_start_bound(
    *, endpoint: ModelEndpoint, pipeline: Pipeline | None, question: str, messages: list[dict], max_output_tokens: int,
    search_query: str | None = None,
) -> Decimal:
    """What a query's hold covers when it is admitted: its first steps, the rest grows the hold as it runs.

    Retrieval (the question embedded once per embedding model of the corpora, counted exactly) and
    the start of a generation over the prompt without its passages: the conversation, the question,
    the system prompt and the strategy's framing, read by the generator (``apps.costs.tokens``) with
    every output token for a remote endpoint or the first decode steps for a local model
    (``metering.local_start_bound``). Later steps grow the hold before they run, from what is then
    known exactly (docs/costs.md, "Holds grow with the work"): the compress stage by its plan
    (``_QueryHooks.compression_planned``), the generation's exact prompt and its decoding.
    """
    from apps.costs.metering import local_start_bound

    price = price_current(model_name=endpoint.price_name)
    prompt_tokens = prompt_tokens_bound(endpoint, [*messages, {"role": "user", "content": question}])
    if pipeline is not None:
        system = [{"role": "system", "content": pipeline.system_prompt}] if pipeline.system_prompt else []
        prompt_tokens += text_tokens_bound(endpoint, pipeline.system_prompt) + len(system) * 16 + _PROMPT_FRAMING_TOKENS
    if pipeline_extractive(pipeline):
        # Nothing is generated: the hold grows by the sentences' embedding when they are known
        # (``_QueryHooks.embed``), and by a generation only if nothing was retrieved.
        estimate = ZERO
    elif endpoint.kind == EndpointKind.LOCAL:
        estimate = local_start_bound(
            model=endpoint.price_name, price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens
        )
    else:
        estimate = worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)
    if pipeline is not None:
        from apps.corpora.services.search import search_bound

        if pipeline.retriever != Retriever.NONE:
            estimate += search_bound(
                corpora=list(pipeline.corpora.all()), query=search_query or question, retriever=pipeline.retriever
            )
    return estimate


@transaction.atomic
def query_run_start(
    *,
    team,
    question: str = "",
    pipeline: Pipeline | None = None,
    endpoint: ModelEndpoint | None = None,
    messages: list[dict] | None = None,
    max_output_tokens: int | None = None,
    user=None,
    api_key=None,
    cache: bool | None = None,
    history: list[dict] | None = None,
    conversation=None,
    regenerated_from: QueryRun | None = None,
    decoding: dict | None = None,
) -> QueryRun:
    """Hold the query's first steps (402 if a budget would go over), create the run, enqueue it.

    ``cache``: False skips the team's answer cache for this request (``apps.answer_cache``); a hit
    answers the run at once, without a job. ``history`` (a pipeline's): the conversation's earlier user
    and assistant messages; the newest turns within the pipeline's ``history_token_budget`` are kept
    (``workers.rag.history.history_fit``), the run's ``messages`` are they and the question, its
    ``history`` what was kept and dropped. ``decoding``: this request's temperature / top_p / stop over
    the pipeline's decoding options (validated here)."""
    from apps.answer_cache.services import answer_cache_lookup_bound, answer_cache_serve

    if (pipeline is None) == (endpoint is None):
        raise ValidationFailed("a query names exactly one pipeline or one model endpoint")
    messages = messages or []
    question = (question or "").strip()
    if not question and messages:
        question = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    if not question:
        raise ValidationFailed("the question is empty")
    degradation = None
    if pipeline is not None:  # budget-aware degradation, before the hold (apps.rag.degradation)
        from apps.rag.degradation import query_degradation

        pipeline, degradation = query_degradation(team=team, pipeline=pipeline, user=user, api_key=api_key)
    target_endpoint = pipeline.model_endpoint if pipeline is not None else endpoint
    if not target_endpoint.enabled:
        raise ValidationFailed(f"model {target_endpoint.name!r} is disabled")
    decoding = _request_decoding(pipeline=pipeline, endpoint=target_endpoint, decoding=decoding)
    fitted: dict = {}
    search_query = None
    if pipeline is not None:
        messages, fitted, search_query = _history_fitted(
            pipeline=pipeline, endpoint=target_endpoint, question=question, history=history or []
        )
    cap = max_output_tokens or (pipeline.max_output_tokens if pipeline else target_endpoint.max_output_tokens)
    cap = max(1, min(cap, target_endpoint.max_output_tokens))
    # Before any hold: a question (with the conversation, or the pipeline's system prompt and framing)
    # that cannot fit the model's window with the output cap is a 400; passages are fitted later.
    system = [{"role": "system", "content": pipeline.system_prompt}] if pipeline and pipeline.system_prompt else []
    asked = messages or [{"role": "user", "content": question}]
    if pipeline is not None and pipeline.is_cascade:  # every tier checked, the hold covers them all
        from apps.rag.cascade import cascade_start_bound

        estimate = cascade_start_bound(pipeline=pipeline, question=question, messages=messages[:-1],
                                       max_output_tokens=cap, degradation=degradation,
                                       start_bound=_query_start_bound, framing_tokens=_PROMPT_FRAMING_TOKENS)
    else:
        prompt_check(target_endpoint, [*system, *asked], max_output_tokens=cap,
                     extra_tokens=_PROMPT_FRAMING_TOKENS if pipeline is not None else 0)
        estimate = _query_start_bound(
            endpoint=target_endpoint, pipeline=pipeline, question=question,
            messages=messages[:-1] if pipeline is not None else messages, max_output_tokens=cap,
            search_query=search_query,
        )
    if pipeline is not None and (len(messages) > 1 or decoding or regenerated_from is not None):
        # A follow-up depends on its history, a request's own decoding changes the answer, and a
        # regenerate asks for a new one: none is answered from (or stored in) the answer cache.
        cache = False
    if pipeline is not None:
        estimate += answer_cache_lookup_bound(pipeline=pipeline, question=question, requested=cache)
    reservation = hold_open(
        path="query",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=estimate,
        description=f"query on {pipeline.name if pipeline else target_endpoint.name}",
        ttl_s=int(settings.PARSIMONY_MODEL_WALL_TIME_S * 3 + 300),
    ).reservation
    run = QueryRun.objects.create(
        team=team,
        pipeline=pipeline,
        endpoint=target_endpoint,
        user=user if getattr(user, "pk", None) else None,
        api_key=api_key,
        reservation=reservation,
        question=question,
        messages=messages,
        max_output_tokens=cap,
        degradation=degradation or {},
        conversation=conversation,
        regenerated_from=regenerated_from,
        history=fitted,
        decoding=decoding,
    )
    if answer_cache_serve(run=run, requested=cache):
        return run
    run.job = job_start(
        kind="rag.query", team=team, created_by=user,
        params={"query_run_id": run.pk, "reservation_id": reservation.pk}, total=3,
        queue=query_queue(endpoint=target_endpoint, pipeline=pipeline),
    )
    run.save(update_fields=["job"])
    return run


def _request_decoding(*, pipeline: Pipeline | None, endpoint: ModelEndpoint, decoding: dict | None) -> dict:
    """A request's decoding overrides (None values left out), checked with the pipeline's own."""
    from workers.runtime.decoding import decoding_settings

    chosen = {key: value for key, value in (decoding or {}).items() if value is not None}
    if not chosen:
        return {}
    merged = {**(pipeline.decoding_options if pipeline is not None else {}), **chosen}
    try:
        decoding_settings(endpoint.source or endpoint.name, merged)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    return chosen


def _history_fitted(
    *, pipeline: Pipeline, endpoint: ModelEndpoint, question: str, history: list[dict]
) -> tuple[list[dict], dict, str | None]:
    """(the run's messages: the kept history then the question, the run's ``history`` record, the retrieval
    query) for a question with ``history`` (none: the question alone, an empty record)."""
    from workers.rag.history import history_fit, retrieval_query

    asked = {"role": "user", "content": question}
    if not history:
        return [asked], {}, None
    fit = history_fit(history, budget=pipeline.history_token_budget,
                      count=lambda messages: prompt_tokens_bound(endpoint, messages))
    query = retrieval_query(question, fit.messages) if pipeline.retriever != Retriever.NONE else ""
    return [*fit.messages, asked], {**fit.as_dict(), "retrieval_query": query}, query or None


def query_run_cancel(*, run: QueryRun, wait_s: float = 0.0) -> bool:
    """Stop a queued or running query: its job is cancelled and the run reads "cancelled" at once; a running
    worker stops generating before its next token (``AnswerStream``'s cancel check), writes the tokens it
    generated and settles the hold to them; a queued one never runs and its hold is released.
    ``wait_s``: wait up to this long for the worker to have settled (the row then has its final numbers).
    False when the run had already finished."""
    from apps.core.services import job_cancel
    from apps.costs.models import Reservation, ReservationStatus

    run.refresh_from_db()
    if run.is_finished:
        return False
    if run.job is None:
        return bool(QueryRun.objects.filter(pk=run.pk, status__in=(QueryStatus.QUEUED, QueryStatus.RUNNING)).update(
            status=QueryStatus.CANCELLED, finish_reason="cancelled", error="cancelled", finished_at=timezone.now()))
    cancelled = job_cancel(job=run.job)
    deadline = time.monotonic() + wait_s
    while cancelled and run.reservation_id and time.monotonic() < deadline:
        if not Reservation.objects.filter(pk=run.reservation_id, status=ReservationStatus.HELD).exists():
            break
        time.sleep(0.05)
    return cancelled


# --------------------------------------------------------------------------- running a query


def _grounding_bound(*, model: str, price: Any, prompt_tokens: int) -> Decimal:
    """What the grounding prefill's hold must cover: its tokens at the token prices and its prefill's
    device-seconds bound (``metering.local_start_bound`` with no output)."""
    from apps.costs.metering import local_start_bound

    return local_start_bound(model=model, price=price, prompt_tokens=prompt_tokens, max_output_tokens=0)


class _QueryHooks:
    """The engine's hooks for one run (``workers.rag.pipeline.PipelineHooks``): search, the endpoint's
    model, the KV store, and the ledger rows, each written under the run's reservation."""

    def __init__(
        self, *, run: QueryRun, context: LedgerContext, reservation: Any = None, on_model_load: Any = None
    ) -> None:
        self.run = run
        self.on_model_load = on_model_load  # called before a cold start loads the endpoint's model
        self.context = context
        # The hold the rows are written under: the run's, or a shadow baseline's (apps.rag.shadow).
        self.reservation = reservation or run.reservation
        self.endpoint: ModelEndpoint = run.pipeline.model_endpoint if run.pipeline_id else run.endpoint
        self.retrieval_record: UsageRecord | None = None
        self.generation_record: UsageRecord | None = None
        self.quality_record: UsageRecord | None = None  # the quality check's embedding
        self.grounding_record: UsageRecord | None = None  # the quality check's question-only prefill
        self.compression: Any = None  # the compress stage's share of the hold (apps.rag.compression_hold)
        self._target: Any = None

    def retrieve(self, question: str, k: int) -> list[Any]:
        from apps.corpora.selectors import chunk_search_many
        from workers.rag.pipeline import RetrievedChunk

        pipeline = self.run.pipeline
        if pipeline.retriever == Retriever.NONE:
            return []  # retrieval-free: nothing searched, nothing billed
        corpora = list(pipeline.corpora.all())
        timings: dict[str, float] = {}
        started = time.perf_counter()
        hits = chunk_search_many(
            corpora=corpora, query=question, retriever=pipeline.retriever, k=k, timings=timings
        ) if corpora else []
        retrieve_s = time.perf_counter() - started
        self.retrieval_record = usage_record(
            context=self.context,
            stage=Stage.RETRIEVE,
            model_name=EMBEDDING_PRICE_NAME,
            usage=Usage(
                # The query embedding is the model work of retrieval; index search is bookkeeping.
                prompt_tokens=embedding_tokens(DEFAULT_EMBEDDING_MODEL, [question]),
                cpu_seconds=to_decimal(round(timings.get(
                    "embed_query_ms", 0.0 if pipeline.retriever == "bm25" else 1000 * retrieve_s) / 1000, 6)),
            ),
            price=price_current(model_name=EMBEDDING_PRICE_NAME),
            latency_ms=int(retrieve_s * 1000),
            reservation=self.reservation,
        )
        return [
            RetrievedChunk(
                chunk_id=hit.chunk.pk, document_id=hit.chunk.document_id, title=hit.chunk.document.title,
                text=hit.chunk.text, start=hit.chunk.char_start, end=hit.chunk.char_end, score=hit.score,
                retrievers=dict(hit.retrievers),
            )
            for hit in hits
        ]

    def model(self) -> Any:
        if self._target is None:
            if self.on_model_load is not None and not endpoint_loaded(self.endpoint):
                self.on_model_load()
            self._target = endpoint_target(self.endpoint)
        return self._target

    def local_model(self) -> Any | None:
        from workers.runtime.local_lm import LoadedModel

        if self.endpoint.kind != EndpointKind.LOCAL:
            return None
        target = self.model()
        return target if isinstance(target, LoadedModel) else None

    def kv_store(self) -> Any:
        return kv_store()

    def fixed_context_text(self) -> str:
        return pipeline_fixed_context_text(pipeline=self.run.pipeline)

    def compression_planned(self, plan: Any) -> Any:
        """Grow the run's hold by the compress stage's plan, then call by call (``CompressionHold``)."""
        from apps.rag.compression_hold import CompressionHold

        if self.reservation is None:
            return None
        self.compression = CompressionHold(
            hold=hold_resume(reservation=self.reservation, context=self.context, path="query"),
            price=price_current(model_name=self.endpoint.price_name), model=self.endpoint.price_name,
            local=self.local_model() is not None,
        )
        return self.compression.planned(plan)

    def bill_compression(self, *, prompt_tokens: int, completion_tokens: int, compute_s: float) -> None:
        """The compress stage's row, its device seconds clamped to the stage's share of the hold.

        As with a generation stopped by its hold, device time past the bound the stage grew the hold
        by (``CompressionHold.bound``) is the operator's, not billed: settlement ≤ hold.
        """
        price = price_current(model_name=self.endpoint.price_name)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      cpu_seconds=to_decimal(round(compute_s, 6)))
        if self.compression is not None:
            bound = self.compression.bound
            clamped = device_seconds_within(usage=usage, price=price, room=bound)
            if clamped.cpu_seconds != usage.cpu_seconds:
                logger.warning("query #%s: compression ran %.3f s, past its bound; billing %s s",
                               self.run.pk, compute_s, clamped.cpu_seconds)
            usage = clamped
        usage_record(
            context=self.context,
            stage=Stage.COMPRESS,
            model_name=self.endpoint.price_name,
            usage=usage,
            price=price,
            latency_ms=int(compute_s * 1000),
            reservation=self.reservation,
        )

    def generate(self, messages: list[dict], on_token) -> MeteredCall:
        cap = self.run.max_output_tokens
        if self.reservation is not None and self.local_model() is None:
            # A remote call cannot grow its hold once sent: the hold grows to the call's bound, its
            # prompt now exactly known, before it is (402 from a budget: nothing sent, nothing billed).
            # A local model's hold grows while it decodes instead (``metering.generation_allowance``).
            _, bound = call_estimate(
                endpoint=self.endpoint, target=self.model(), messages=messages,
                max_output_tokens=min(cap, self.endpoint.max_output_tokens),
            )
            hold_resume(reservation=self.reservation, context=self.context, path="query").ensure(bound)
        call = model_call(
            endpoint=self.endpoint,
            messages=messages,
            context=self.context,
            max_output_tokens=cap,
            on_token=on_token,
            reservation=self.reservation,
            decoding={**(self.run.pipeline.decoding_options if self.run.pipeline_id else {}), **self.run.decoding}
            or None,
        )
        self.generation_record = call.record
        return call

    def metered(self, generate):
        price = price_current(model_name=self.endpoint.price_name)
        result = generate()
        self.generation_record = generation_bill(
            context=self.context, endpoint=self.endpoint, result=result, price=price,
            reservation=self.reservation,
        )
        return result

    def generation_budget_s(
        self, prompt_tokens: int, max_output_tokens: int, prefill_tokens: int | None = None
    ) -> Any:
        """The device-seconds the run's hold pays for an engine generation (superposition, fixed-context
        answers), growing as it decodes: as ``model_call``'s, ``metering.generation_allowance`` on the
        run's reservation at the endpoint's price and the loaded model's device. None: unbounded."""
        if self.reservation is None:
            return None
        model = self.local_model()
        return generation_allowance(
            model=self.endpoint.price_name, reservation=self.reservation,
            price=price_current(model_name=self.endpoint.price_name), device=str(getattr(model, "device", "cpu")),
            prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens, prefill_tokens=prefill_tokens,
        )

    def embed(self, texts: list[str]) -> Any:
        """One encode of ``texts`` with the pipeline's sentence embedder (an extractive answer's sentences):
        the hold grows by its bound first (BudgetExceeded when it cannot), then one ``embed`` row is billed
        under the run's reservation."""
        vectors, _ = self._embed_billed(texts)
        return vectors

    def embed_for_quality(self, texts: list[str]) -> Any:
        """Quality's sentence and passage vectors (``workers.rag.quality``), billed the same way and kept as
        the run's quality record; None (token overlap alone) when the hold cannot grow to cover it."""
        from apps.costs.services import BudgetExceeded

        try:
            vectors, self.quality_record = self._embed_billed(texts)
        except BudgetExceeded:
            logger.info("query #%s: no budget for the quality embedding; token overlap alone", self.run.pk)
            return None
        return vectors

    def question_only_logprobs(self, *, question: str, answer: str, stopped: bool) -> list[float] | None:
        """The contrastive grounding prefill (``workers.rag.grounding``): ``answer``'s tokens scored by the
        endpoint's local model after the question-only prompt. The hold grows by the prefill's bound first
        (None, the signal unknown, when it cannot: the answer is never refused for it); one ``prefill`` row
        at the endpoint's price (its tokens, the measured device seconds) under the run's reservation. None
        for a remote endpoint (no log-probabilities)."""
        from apps.costs.services import BudgetExceeded
        from workers.rag.grounding import question_only_logprobs, question_only_messages

        lm = self.local_model()
        if lm is None:
            return None
        price = price_current(model_name=self.endpoint.price_name)
        system_prompt = self.run.pipeline.system_prompt if self.run.pipeline_id else ""
        tokens = (prompt_tokens_bound(self.endpoint, question_only_messages(question, system_prompt))
                  + text_tokens_bound(self.endpoint, answer) + 1)
        if self.reservation is not None:
            try:
                hold_resume(reservation=self.reservation, context=self.context, path="query").ensure(
                    _grounding_bound(model=self.endpoint.price_name, price=price, prompt_tokens=tokens)
                )
            except BudgetExceeded:
                logger.info("query #%s: no budget for the grounding prefill; left unknown", self.run.pk)
                return None
        scored = question_only_logprobs(lm, question=question, answer=answer, stopped=stopped,
                                        system_prompt=system_prompt)
        on_gpu = str(getattr(lm, "device", "cpu")).startswith("cuda")
        spent = to_decimal(round(scored.compute_s, 6))
        self.grounding_record = usage_record(
            context=self.context,
            stage=Stage.PREFILL,
            model_name=self.endpoint.price_name,
            usage=Usage(prompt_tokens=scored.prompt_tokens, gpu_seconds=spent if on_gpu else Decimal(0),
                        cpu_seconds=Decimal(0) if on_gpu else spent),
            price=price,
            latency_ms=int(scored.compute_s * 1000),
            reservation=self.reservation,
        )
        return scored.logprobs

    def _embed_billed(self, texts: list[str]) -> tuple[Any, UsageRecord]:
        from apps.corpora.services.embedding import embed_batch, embedder_for, embedding_billed, texts_bound

        price = price_current(model_name=EMBEDDING_PRICE_NAME)
        if self.reservation is not None:
            hold_resume(reservation=self.reservation, context=self.context, path="query").ensure(
                texts_bound(model_name=DEFAULT_EMBEDDING_MODEL, texts=texts, slab=None, price=price, here=True)
            )
        embedder = embedder_for(DEFAULT_EMBEDDING_MODEL)
        vectors, seconds = embedder.encode_timed(texts, batch_size=embed_batch(embedder.device))
        on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
        spent = to_decimal(round(seconds, 6))
        record = usage_record(
            context=self.context,
            stage=Stage.EMBED,
            model_name=EMBEDDING_PRICE_NAME,
            usage=Usage(prompt_tokens=embedding_tokens(DEFAULT_EMBEDDING_MODEL, texts),
                        gpu_seconds=spent if on_gpu else Decimal(0), cpu_seconds=Decimal(0) if on_gpu else spent),
            price=price,
            latency_ms=int(seconds * 1000),
            reservation=self.reservation,
        )
        embedding_billed(DEFAULT_EMBEDDING_MODEL)
        return vectors, record

    def count_tokens(self, prompt: list[dict] | str) -> int:
        """The endpoint's tokens of a chat prompt or a text, from its tokenizer alone (no model loaded)."""
        if isinstance(prompt, str):
            return text_tokens_bound(self.endpoint, prompt)
        return prompt_tokens_bound(self.endpoint, prompt)

    def baseline(
        self, baseline_prompt_tokens: int | None, completion_tokens: int | None = None
    ) -> tuple[Decimal, str] | None:
        """(cost, kind) of the naive pipeline: the same retrieval, and the generation with the naive prompt
        (``apps.costs.baseline``: exact for token prices, a cost-model estimate for device time).

        The quality check's embedding is in both (the naive run's answer would be checked too, at about
        the same cost). This run's extra work (compression calls, superposition's path prefill, a fixed
        context's prefill, an extractive answer's sentence embeddings) is in its actual cost, never in the
        baseline.
        ``completion_tokens``: the baseline's output tokens when this run generated nothing (an extractive
        answer: the quote's length); the baseline is then an estimate at the endpoint's current price."""
        if baseline_prompt_tokens is not None and self.generation_record is None and completion_tokens is not None:
            from apps.costs.baseline import naive_generation_estimate

            generation, kind = naive_generation_estimate(
                price=price_current(model_name=self.endpoint.price_name), prompt_tokens=baseline_prompt_tokens,
                completion_tokens=completion_tokens, model=self.endpoint.price_name,
                local=self.endpoint.kind == EndpointKind.LOCAL,
            )
            retrieval = self.retrieval_record.cost if self.retrieval_record is not None else ZERO
            return retrieval + generation, kind
        if baseline_prompt_tokens is None or self.generation_record is None:
            return None
        record = self.generation_record
        # An endpoint that bills more prompt tokens than we count (its excess is this run's overage
        # row) would bill the naive prompt the same way: scale by what it reported for this one.
        over = UsageRecord.objects.filter(
            reservation_id=record.reservation_id, query_run_id=self.run.pk, stage=Stage.OVERAGE
        ).aggregate(tokens=Sum("prompt_tokens"))["tokens"]
        if over and record.prompt_tokens:
            baseline_prompt_tokens = -(-baseline_prompt_tokens * (record.prompt_tokens + over) // record.prompt_tokens)
        generation, kind = naive_generation_cost(
            record=self.generation_record, prompt_tokens=baseline_prompt_tokens, model=self.endpoint.price_name
        )
        retrieval = self.retrieval_record.cost if self.retrieval_record is not None else ZERO
        # Every run's answer is checked (workers.rag.quality): the naive pipeline's would be too.
        quality = sum((r.cost for r in (self.quality_record, self.grounding_record) if r is not None), ZERO)
        return retrieval + generation + quality, kind


def _engine_config(run: QueryRun, endpoint: ModelEndpoint) -> Any:
    from workers.rag.pipeline import PipelineConfig

    pipeline = run.pipeline
    cap = max(1, min(run.max_output_tokens, endpoint.max_output_tokens))
    window, ceiling = endpoint_context_window(endpoint), settings.PARSIMONY_MAX_PROMPT_TOKENS
    return PipelineConfig(
        name=pipeline.name,
        model_name=endpoint.name,
        system_prompt=pipeline.system_prompt,
        top_k=pipeline.top_k,
        compression_method=pipeline.compression_method,
        compression_target=pipeline.compression_target,
        prompting_strategy=pipeline.prompting_strategy,
        prompting_options=pipeline.prompting_options,
        fixed_context=pipeline.has_fixed_context,
        attention_backend=pipeline.attention_backend,
        attention_options=pipeline.attention_options,
        fixed_context_max_tokens=fixed_context_max_tokens(),
        max_output_tokens=cap,
        # Passages beyond what fits the model's window (with the output cap) and the ceiling are dropped.
        max_prompt_tokens=min(window - cap if window else ceiling, ceiling),
        wall_time_limit_s=settings.PARSIMONY_MODEL_WALL_TIME_S,
        # Query-independent compression work is cached on disk under the data root, shared by
        # every pipeline of this process.
        compression_cache_dir=Path(settings.DATA_ROOT) / "compression-cache",
        model_cache_dir=Path(settings.DATA_ROOT),
        retrieval_reference=tuple(pipeline_best_hit_scores(pipeline=pipeline, exclude_run_id=run.pk)),
        abstain_below=pipeline.abstain_below,
        quality_grounding=settings.PARSIMONY_QUALITY_GROUNDING,
    )


def _ledger_total(run_id: int) -> Decimal:
    return UsageRecord.objects.filter(query_run_id=run_id).aggregate(total=Sum("cost"))["total"] or ZERO


def _answer(run: QueryRun, hooks: _QueryHooks, stream: AnswerStream, progress) -> Any:
    """The engine's answer for the run: its pipeline's, or a direct call's (no pipeline)."""
    from workers.rag.pipeline import PipelineError, run_direct, run_pipeline

    try:
        if run.pipeline_id and run.pipeline.is_cascade:
            from apps.rag.cascade import cascade_answer

            return cascade_answer(run=run, hooks=hooks, stream=stream, progress=progress, answer=_answer)
        if run.pipeline_id:
            config = _engine_config(run, hooks.endpoint)
            return run_pipeline(question=run.question, config=config, hooks=hooks, progress=progress,
                                on_token=stream, history=run.messages[:-1])
        messages = run.messages or [{"role": "user", "content": run.question}]
        return run_direct(messages=messages, hooks=hooks, progress=progress, on_token=stream)
    except PipelineError as exc:
        raise ValidationFailed(str(exc)) from exc


def query_job_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """The query job ended without its task finishing the run (``apps.core.services.job_end``): the run
    is failed with the reason, at the cost of the ledger rows it wrote."""
    for run_id in QueryRun.objects.filter(job=job).values_list("pk", flat=True):
        if outcome == JobEnd.CANCELLED:
            # Cancelled at once, at the cost of its ledger rows so far; a worker still running it stops before
            # its next token and writes the final numbers (the tokens it generated) as it settles the hold.
            QueryRun.objects.filter(pk=run_id, status__in=(QueryStatus.QUEUED, QueryStatus.RUNNING)).update(
                status=QueryStatus.CANCELLED, finish_reason="cancelled", error="cancelled",
                cost=_ledger_total(run_id), finished_at=timezone.now(),
            )
            continue
        job_run_end(runs=QueryRun.objects.filter(pk=run_id), outcome=outcome, reason=reason, cost=_ledger_total(run_id))


def query_run_execute(*, query_run_id: int, progress=None) -> QueryRun | None:
    """Run a query (in a worker). Idempotent: a finished run is left alone; a retried one starts over."""
    progress = progress or (lambda *args, **kwargs: None)
    run = QueryRun.objects.select_related("pipeline", "endpoint", "team", "user", "api_key", "reservation").filter(
        pk=query_run_id
    ).first()
    if run is None:
        logger.warning("query run %s does not exist", query_run_id)
        return None
    if run.is_finished:
        return run
    if run.degradation and run.pipeline_id:  # as admitted (apps.rag.degradation)
        from apps.rag.degradation import pipeline_degraded

        run.pipeline = pipeline_degraded(pipeline=run.pipeline, degradation=run.degradation)
    QueryRun.objects.filter(pk=run.pk).update(status=QueryStatus.RUNNING, answer="", error="")
    started = time.perf_counter()
    context = LedgerContext(
        team=run.team,
        user=run.user,
        api_key=run.api_key,
        query_run_id=run.pk,
        pipeline_name=run.pipeline.name if run.pipeline_id else "",
    )
    stream = AnswerStream(QueryRun, run.pk, cancelled=_cancel_check(run))
    at = [0, 3]  # the engine's last progress step: a cold model load is reported at it

    def tracked(done: int, total: int, message: str) -> None:
        at[:] = [done, total]
        progress(done, total, message)

    hooks = _QueryHooks(run=run, context=context, on_model_load=lambda: progress(
        at[0], at[1], f"loading the model {hooks.endpoint.name} (first question on this worker)"))
    try:
        outcome = _answer(run, hooks, stream, tracked)
    except JobCancelled:
        # Cancelled between two stages: what ran is billed, the hold settled to it.
        return _cancelled(run, stream, started)
    except Exception as exc:
        actual = _ledger_total(run.pk)
        if run.reservation_id:
            reservation_close(reservation=run.reservation, actual=actual)
        QueryRun.objects.filter(pk=run.pk).update(
            status=QueryStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:10_000],
            cost=actual,
            latency_ms=int((time.perf_counter() - started) * 1000),
            finished_at=timezone.now(),
            answer=stream.text,
        )
        raise
    stream.flush()
    if outcome.finish_reason == "cancelled":
        return _cancelled(run, stream, started, answer=outcome.answer)
    records = UsageRecord.objects.filter(query_run_id=run.pk)
    totals = records.aggregate(cost=Sum("cost"))
    generation = records.filter(stage=Stage.GENERATE).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cached=Sum("cached_tokens")
    )
    actual = totals["cost"] or ZERO
    claimed = hooks.baseline(outcome.baseline_prompt_tokens, outcome.baseline_completion_tokens)
    # A direct call is its own baseline: what ran is the measurement.
    baseline, baseline_kind = claimed if claimed is not None else (actual, BaselineKind.MEASURED)
    if run.reservation_id:
        reservation_settle(reservation=run.reservation, actual=actual)
    progress(3, 3, "done")
    QueryRun.objects.filter(pk=run.pk).update(
        status=QueryStatus.SUCCEEDED,
        answer=outcome.answer,
        finish_reason=outcome.finish_reason,
        citations=outcome.citations,
        prompt_tokens=generation["prompt"] or 0,
        completion_tokens=generation["completion"] or 0,
        cached_tokens=generation["cached"] or 0,
        context_tokens_before=outcome.context_tokens_before,
        context_tokens_after=outcome.context_tokens_after,
        repetition_tokens_saved=outcome.repetition_tokens_saved,
        **_quality_fields(outcome.quality),
        cost=actual,
        baseline_cost=money(baseline),
        baseline_kind=baseline_kind,
        savings=money(baseline - actual),
        latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    if run.pipeline_id:
        from apps.answer_cache.services import answer_cache_store_safely

        answer_cache_store_safely(run=run)
    if claimed is not None:
        from apps.rag.shadow import shadow_baseline_maybe_start

        # After the answer is stored: the team never waits for its shadow (its own job, same queue).
        shadow_baseline_maybe_start(run=run)
    return run


def _cancel_check(run: QueryRun):
    """Whether the run's job was cancelled (the answer stream asks between tokens, throttled)."""
    from apps.core.models import Job, JobStatus

    if run.job_id is None:
        return None
    return lambda: Job.objects.filter(pk=run.job_id, status=JobStatus.CANCELLED).exists()


def _cancelled(run: QueryRun, stream: AnswerStream, started: float, answer: str | None = None) -> QueryRun:
    """The run stopped on a cancel: its ledger rows (the tokens generated so far) are what it cost, the hold
    is settled to them (released when there are none), the row says cancelled with what was streamed."""
    actual = _ledger_total(run.pk)
    generation = UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.GENERATE).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cached=Sum("cached_tokens")
    )
    # The row first, then the hold: a hold no longer held means the row has its final numbers.
    QueryRun.objects.filter(pk=run.pk).update(
        status=QueryStatus.CANCELLED, finish_reason="cancelled", error="cancelled",
        answer=answer if answer is not None else stream.text,
        prompt_tokens=generation["prompt"] or 0, completion_tokens=generation["completion"] or 0,
        cached_tokens=generation["cached"] or 0, cost=actual,
        latency_ms=int((time.perf_counter() - started) * 1000), finished_at=timezone.now(),
    )
    if run.reservation_id:
        reservation_close(reservation=run.reservation, actual=actual)
    run.refresh_from_db()
    return run


def _quality_fields(quality: dict[str, Any] | None) -> dict[str, Any]:
    """The QueryRun columns of an engine result's quality (blank label: not assessed)."""
    if not quality:
        return {"quality_label": "", "quality": {}}
    return {
        "quality_label": quality["label"],
        "support": quality["support"],
        "support_score": quality["support_score"],
        "retrieval_confidence": quality["retrieval_confidence"],
        "citations_removed": quality["citations_removed"],
        "quality": quality,
    }


def query_run_wait(*, run: QueryRun, timeout_s: float, poll_s: float = 0.1) -> QueryRun:
    """Block until the run finishes or the timeout passes; returns the fresh row either way."""
    from apps.core.selectors import row_wait_finished

    return row_wait_finished(row=run, timeout_s=timeout_s, poll_s=poll_s)
