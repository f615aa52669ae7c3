"""Running one question of a pipeline under a hold that already exists: the pieces every runner shares.

The engine (``workers.rag.pipeline.run_pipeline``) answers a question with hooks that search, call the
model and write every stage's ledger row under a reservation. Four runners drive it:

- a query (``apps.rag.services.query_run_execute``), under the hold its admission opened;
- a bulk job's rows (``apps.bulk.services``), under the job's hold;
- a shadow baseline (``apps.rag.shadow_run``), under a hold of the operator team's;
- a cascade's tiers (``apps.rag.cascade``), under the cascade run's hold.

They share this public API:

- ``QueryHooks(run=..., context=..., reservation=...)``: the engine's hooks for one run, every ledger
  row written with ``context`` under ``reservation`` (default: the run's own); ``question_hooks`` builds
  them with the run's own ledger context (``run_context``).
- ``engine_config(run=..., endpoint=...)``: the engine's ``PipelineConfig`` for the run's pipeline.
- ``answered_fields(hooks=..., outcome=..., actual=...)``: the QueryRun columns of an answered question
  (answer, citations, quality, cost, baseline and savings); ``quality_fields`` the quality's alone.
- ``query_start_bound(...)``: what a question's hold covers when it is admitted (its first steps).

It sits below ``apps.rag.services`` (which starts and settles queries) and ``apps.rag.cascade``: it
imports neither.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Sum

from apps.costs.baseline import naive_generation_cost
from apps.costs.billing import generation_bill
from apps.costs.defaults import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.metering import (
    MeteredCall,
    call_estimate,
    endpoint_loaded,
    endpoint_target,
    generation_allowance,
    model_call,
)
from apps.costs.models import ZERO, EndpointKind, ModelEndpoint, Stage, UsageRecord
from apps.costs.pricing import Usage, money, to_decimal, worst_case_cost
from apps.costs.services import LedgerContext, price_current, usage_record
from apps.costs.services.holds import hold_resume
from apps.costs.services.ledger import device_seconds_within
from apps.costs.tokens import (
    embedding_tokens,
    endpoint_context_window,
    prompt_tokens_bound,
    text_tokens_bound,
)
from apps.rag.fixed_context import fixed_context_max_tokens, kv_store, pipeline_fixed_context_text
from apps.rag.models import BaselineKind, Pipeline, QueryRun, QueryStatus, Retriever
from apps.rag.selectors import pipeline_best_hit_scores

logger = logging.getLogger(__name__)


def strategy_extractive(name: str) -> bool:
    """Whether the prompting strategy ``name`` answers by quoting its passages (no generation)."""
    from workers.prompting import STRATEGIES

    return bool(getattr(STRATEGIES.get(name), "extractive", False))


def pipeline_extractive(pipeline: Pipeline | None) -> bool:
    """Whether ``pipeline`` answers by quoting its passages (no generation: ``extractive_answer``)."""
    return pipeline is not None and strategy_extractive(pipeline.prompting_strategy)


# The prompting strategies' instruction text and framing ("Context:", "Question:", separators): well
# above the longest instruction in workers/prompting.
PROMPT_FRAMING_TOKENS = 128


def query_start_bound(
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
    (``QueryHooks.compression_planned``), the generation's exact prompt and its decoding.
    """
    from apps.costs.metering import local_start_bound

    price = price_current(model_name=endpoint.price_name)
    prompt_tokens = prompt_tokens_bound(endpoint, [*messages, {"role": "user", "content": question}])
    if pipeline is not None:
        system = [{"role": "system", "content": pipeline.system_prompt}] if pipeline.system_prompt else []
        prompt_tokens += text_tokens_bound(endpoint, pipeline.system_prompt) + len(system) * 16 + PROMPT_FRAMING_TOKENS
    if pipeline_extractive(pipeline):
        # Nothing is generated: the hold grows by the sentences' embedding when they are known
        # (``QueryHooks.embed``), and by a generation only if nothing was retrieved.
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


def grounding_bound(*, model: str, price: Any, prompt_tokens: int) -> Decimal:
    """What the grounding prefill's hold must cover: its tokens at the token prices and its prefill's
    device-seconds bound (``metering.local_start_bound`` with no output)."""
    from apps.costs.metering import local_start_bound

    return local_start_bound(model=model, price=price, prompt_tokens=prompt_tokens, max_output_tokens=0)


class QueryHooks:
    """The engine's hooks for one run (``workers.rag.pipeline.PipelineHooks``): search, the endpoint's
    model, the KV store, and the ledger rows, each written with ``context`` under ``reservation`` (the hold
    the runner opened: the run's own when None). Each hold-growing step (compression, a remote call, an
    embedding) grows that hold first. After the engine ran, ``retrieval_record``, ``generation_record`` and
    ``quality_record`` are the rows ``baseline`` and ``answered_fields`` read.

    ``on_model_load``: called before a cold start loads the endpoint's model (progress for a slow first
    question)."""

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
            model_name=LOCAL_EMBEDDING_PRICE_NAME,
            usage=Usage(
                # The query embedding is the model work of retrieval; index search is bookkeeping.
                prompt_tokens=embedding_tokens(LOCAL_EMBEDDING_MODEL, [question]),
                cpu_seconds=to_decimal(round(timings.get(
                    "embed_query_ms", 0.0 if pipeline.retriever == "bm25" else 1000 * retrieve_s) / 1000, 6)),
            ),
            price=price_current(model_name=LOCAL_EMBEDDING_PRICE_NAME),
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
            decoding=run_decoding(self.run),
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
            bound = grounding_bound(model=self.endpoint.price_name, price=price, prompt_tokens=tokens)
            try:
                hold_resume(reservation=self.reservation, context=self.context, path="query").ensure(bound)
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
        from apps.corpora.services.embedding import texts_embed_billed

        hold = None
        if self.reservation is not None:
            hold = hold_resume(reservation=self.reservation, context=self.context, path="query")
        return texts_embed_billed(model_name=LOCAL_EMBEDDING_MODEL, texts=texts, context=self.context, hold=hold)

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


def run_decoding(run: QueryRun) -> dict[str, Any] | None:
    """The run's decoding options over its pipeline's (None: neither sets any): what its metered generation
    and the generations the engine runs itself (superposition, fixed context) decode with."""
    pipeline_options = (run.pipeline.decoding_options or {}) if run.pipeline_id else {}
    return {**pipeline_options, **(run.decoding or {})} or None


def engine_config(*, run: QueryRun, endpoint: ModelEndpoint) -> Any:
    """The engine's ``PipelineConfig`` for the run's pipeline answered by ``endpoint``: the output cap is the
    run's within the endpoint's, the prompt's room what the model's window (or the deployment's ceiling)
    leaves after it; the retrieval reference is the pipeline's other runs' best hits."""
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
        decoding=run_decoding(run),
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


def quality_fields(*, quality: dict[str, Any] | None) -> dict[str, Any]:
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


def run_context(*, run: QueryRun) -> LedgerContext:
    """The ledger context of a run's own rows: its team, user and API key, its id, its pipeline's name."""
    return LedgerContext(
        team=run.team,
        user=run.user,
        api_key=run.api_key,
        query_run_id=run.pk,
        pipeline_name=run.pipeline.name if run.pipeline_id else "",
    )


def question_hooks(*, run: QueryRun, reservation: Any = None, on_model_load: Any = None) -> QueryHooks:
    """The engine's hooks for ``run`` with its own ledger context (``run_context``), every row written under
    ``reservation``: the hold that already covers the question (None: the run's own)."""
    return QueryHooks(run=run, context=run_context(run=run), reservation=reservation, on_model_load=on_model_load)


def answered_fields(*, hooks: QueryHooks, outcome: Any, actual: Decimal) -> dict[str, Any]:
    """The QueryRun columns of a question the engine answered (``outcome``: its ``PipelineResult``) at a cost
    of ``actual``: succeeded, the answer, finish reason, citations and quality, the cost, and the baseline
    (naive RAG with the same model, ``hooks.baseline``: exact or estimated) with the savings against it.
    A run with no naive counterpart (a direct call) is its own baseline, ``measured``: no savings claimed."""
    claimed = hooks.baseline(outcome.baseline_prompt_tokens, outcome.baseline_completion_tokens)
    baseline, kind = claimed if claimed is not None else (actual, BaselineKind.MEASURED)
    return {
        "status": QueryStatus.SUCCEEDED,
        "answer": outcome.answer,
        "finish_reason": outcome.finish_reason,
        "citations": outcome.citations,
        **quality_fields(quality=outcome.quality),
        "cost": actual,
        "baseline_cost": money(baseline),
        "baseline_kind": kind,
        "savings": money(baseline - actual),
    }
