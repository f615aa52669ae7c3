"""Writes for pipelines and query runs: persistence, reservation and settlement around the engine.

query_run_start (web process): validate, reserve the worst-case cost against every budget,
create the QueryRun and its Job, enqueue on the `gpu` queue. query_run_execute (worker): load
the run, hand the engine (``workers.rag.pipeline``) its hooks (``apps.rag.question_runner``: search,
model, ledger rows; the answer stream into the row), then write the outcome, settle the reservation
to the ledger's total and record the savings against naive RAG with the same model.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.core.errors import JobCancelled, ValidationFailed
from apps.core.jobs import JobEnd
from apps.core.services import job_run_end, job_start
from apps.core.streaming import AnswerStream
from apps.costs.metering import endpoint_resolve
from apps.costs.models import EndpointKind, ModelEndpoint, Stage, UsageRecord
from apps.costs.selectors import query_run_cost
from apps.costs.services import LedgerContext, reservation_close, reservation_settle
from apps.costs.services.holds import hold_open
from apps.costs.tokens import prompt_check, prompt_tokens_bound
from apps.rag.fixed_context import fixed_context_validate
from apps.rag.models import BaselineKind, Pipeline, QueryRun, QueryStatus, Retriever
from apps.rag.question_runner import (
    PROMPT_FRAMING_TOKENS,
    QueryHooks,
    answered_fields,
    engine_config,
    query_start_bound,
    question_hooks,
    strategy_extractive,
)
from apps.rag.question_runner import pipeline_extractive as pipeline_extractive  # re-exported
from apps.rag.selectors import pipeline_option_names, query_queue

logger = logging.getLogger(__name__)


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
    if pipeline is not None and strategy_extractive(values.get("prompting_strategy", pipeline.prompting_strategy)):
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
                                       max_output_tokens=cap, degradation=degradation)
    else:
        prompt_check(target_endpoint, [*system, *asked], max_output_tokens=cap,
                     extra_tokens=PROMPT_FRAMING_TOKENS if pipeline is not None else 0)
        estimate = query_start_bound(
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




def _answer(run: QueryRun, hooks: QueryHooks, stream: AnswerStream, progress) -> Any:
    """The engine's answer for the run: its pipeline's, or a direct call's (no pipeline)."""
    from workers.rag.pipeline import PipelineError, run_direct, run_pipeline

    try:
        if run.pipeline_id and run.pipeline.is_cascade:
            from apps.rag.cascade import cascade_answer

            return cascade_answer(run=run, hooks=hooks, stream=stream, progress=progress, answer=_answer)
        if run.pipeline_id:
            config = engine_config(run=run, endpoint=hooks.endpoint)
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
                cost=query_run_cost(run_id), finished_at=timezone.now(),
            )
            continue
        job_run_end(runs=QueryRun.objects.filter(pk=run_id), outcome=outcome, reason=reason,
                    cost=query_run_cost(run_id))


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
    stream = AnswerStream(QueryRun, run.pk, cancelled=_cancel_check(run))
    at = [0, 3]  # the engine's last progress step: a cold model load is reported at it

    def tracked(done: int, total: int, message: str) -> None:
        at[:] = [done, total]
        progress(done, total, message)

    hooks = question_hooks(run=run, on_model_load=lambda: progress(
        at[0], at[1], f"loading the model {hooks.endpoint.name} (first question on this worker)"))
    try:
        outcome = _answer(run, hooks, stream, tracked)
    except JobCancelled:
        # Cancelled between two stages: what ran is billed, the hold settled to it.
        return _cancelled(run, stream, started)
    except Exception as exc:
        actual = query_run_cost(run.pk)
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
    generation = records.filter(stage=Stage.GENERATE).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cached=Sum("cached_tokens")
    )
    actual = records.total_cost()
    # A direct call is its own baseline (``measured``): what ran is the measurement.
    answered = answered_fields(hooks=hooks, outcome=outcome, actual=actual)
    if run.reservation_id:
        reservation_settle(reservation=run.reservation, actual=actual)
    progress(3, 3, "done")
    QueryRun.objects.filter(pk=run.pk).update(
        **answered,
        prompt_tokens=generation["prompt"] or 0,
        completion_tokens=generation["completion"] or 0,
        cached_tokens=generation["cached"] or 0,
        context_tokens_before=outcome.context_tokens_before,
        context_tokens_after=outcome.context_tokens_after,
        repetition_tokens_saved=outcome.repetition_tokens_saved,
        latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    if run.pipeline_id:
        from apps.answer_cache.services import answer_cache_store_safely

        answer_cache_store_safely(run=run)
    if answered["baseline_kind"] != BaselineKind.MEASURED:  # a claimed baseline: its shadow measures it
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
    actual = query_run_cost(run.pk)
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



def query_run_wait(*, run: QueryRun, timeout_s: float, poll_s: float = 0.1) -> QueryRun:
    """Block until the run finishes or the timeout passes; returns the fresh row either way."""
    from apps.core.selectors import row_wait_finished

    return row_wait_finished(row=run, timeout_s=timeout_s, poll_s=poll_s)
