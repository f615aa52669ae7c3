"""One RAG query on plain data: retrieve → compress → prompt → generate, or answer over a fixed context.

Django-free, like ``workers.agent.loop``: the service hands in a ``PipelineHooks`` object (search,
the endpoint's model, the KV store, ledger rows) plus ``progress`` and ``on_token`` callables,
and gets a ``PipelineResult`` back. The engine decides what runs and in which order; the service
decides what it costs and where it is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from workers.prompting.base import Passage
from workers.runtime.decoding import decoding_settings

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
TokenFn = Callable[[str], None]  # one streamed piece of the answer
STEPS = 3  # progress: retrieve (or load the fixed context), compress, generate


class PipelineError(ValueError):
    """The pipeline cannot run as configured (e.g. a strategy that needs a local model on a remote one)."""


class Generated(Protocol):
    """What any generation returns that the pipeline reads (a metered call, a meter GenerationResult)."""

    text: str
    finish_reason: str


GeneratedT = TypeVar("GeneratedT", bound=Generated)


@dataclass(frozen=True)
class RetrievedChunk:
    """One retrieval hit, best first: the chunk's text and where it came from."""

    chunk_id: int
    document_id: int
    title: str
    text: str
    start: int  # character offsets into the document
    end: int
    score: float
    retrievers: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (rank, score)


@dataclass(frozen=True)
class PipelineConfig:
    """A pipeline's settings as plain values (the service copies them from its row and settings)."""

    name: str = ""  # the pipeline's, for messages
    model_name: str = ""  # the endpoint's, for messages
    system_prompt: str = ""
    top_k: int = 5
    compression_method: str = "none"
    compression_target: float = 1.0
    prompting_strategy: str = "naive"
    prompting_options: dict[str, Any] | None = None
    fixed_context: bool = False  # answer over the fixed context instead of retrieving
    attention_backend: str = "full"
    attention_options: dict[str, Any] | None = None
    fixed_context_max_tokens: int | None = None
    # The pipeline's decoding options with the run's (``workers.runtime.decoding``), for the generations the
    # engine runs itself (superposition, fixed context); a metered call through ``PipelineHooks.generate``
    # gets them from the service.
    decoding: dict[str, Any] | None = None
    # Caps for generations the engine runs itself (superposition, fixed context); a metered
    # call through ``PipelineHooks.generate`` applies the service's own.
    max_output_tokens: int = 256
    # The most prompt tokens the generation may read (the context window less the output cap, and the
    # per-request ceiling); passages that would pass it are dropped, lowest-ranked first. None: no limit.
    max_prompt_tokens: int | None = None
    wall_time_limit_s: float = 120.0
    compression_cache_dir: Path | None = None  # query-independent compression work (None: no cache)
    model_cache_dir: Path | None = None  # where helper models (the surprisal scorer) live
    # Quality (workers.rag.quality): earlier runs' best-hit scores (the retrieval confidence's reference),
    # the confidence below which the pipeline answers "not found" without generating (None: never),
    # and the label thresholds (None: the calibrated defaults).
    retrieval_reference: tuple[float, ...] = ()
    abstain_below: float | None = None
    quality_thresholds: Any = None
    # The contrastive grounding signal (workers.rag.grounding): after a local generation, one metered prefill
    # of the question-only prompt and the answer (the hooks' ``question_only_logprobs``). Off: not computed.
    quality_grounding: bool = False


@dataclass
class PipelineResult:
    answer: str
    finish_reason: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    # Prompt tokens of the baseline generation (naive RAG over every retrieved chunk, or the
    # fixed context with nothing cached); None for a direct call, which has no baseline.
    baseline_prompt_tokens: int | None = None
    context_tokens_before: int = 0
    context_tokens_after: int = 0
    # The degeneration guard stopped a loop ("repetition"): the output tokens of the cap not spent.
    repetition_tokens_saved: int = 0
    # Output tokens of the baseline generation; None: the real generation's (an extractive answer has none).
    baseline_completion_tokens: int | None = None
    # The answer's quality signals (``workers.rag.quality.Quality.as_dict()``); None: not assessed.
    quality: dict[str, Any] | None = None


class PipelineHooks(Protocol):
    """What the service provides for one run; each method that spends money writes its ledger row."""

    def retrieve(self, question: str, k: int) -> list[RetrievedChunk]:
        """The pipeline's corpora searched for ``question``, best first; bills the retrieval."""
        ...

    def model(self) -> Any:
        """The endpoint's meter target: a loaded local model or a remote endpoint's config."""
        ...

    def local_model(self) -> Any | None:
        """The endpoint's loaded local model (``LoadedModel``), None when it is not one."""
        ...

    def kv_store(self) -> Any:
        """The KV store of cached prefixes and fixed contexts (``indexes.kv_store.KVStore``)."""
        ...

    def fixed_context_text(self) -> str:
        """The pipeline's fixed context as one text ("" when it has none)."""
        ...

    def compression_planned(self, plan: Any) -> Callable[[Any], dict[str, Any] | None] | None:
        """The compress stage is about to run ``plan`` (``workers.compression.CompressionPlan``): grow
        the run's hold by its bound without its model calls, and return the plan's ``on_model_call``
        (called before each model call, counted exactly: it grows the hold for that call and returns
        the meter's extra arguments), or None."""
        ...

    def bill_compression(self, *, prompt_tokens: int, completion_tokens: int, compute_s: float) -> None:
        """Bill the compress stage: the endpoint model's tokens and the seconds it took."""
        ...

    def generate(self, messages: list[dict[str, Any]], on_token: TokenFn) -> Generated:
        """One metered model call on the endpoint (reserved, run and billed by the service)."""
        ...

    def metered(self, generate: Callable[[], GeneratedT]) -> GeneratedT:
        """Run a generation the engine does with the local model itself and bill its result
        (a meter ``GenerationResult``); prices are fixed before it starts, as for ``generate``."""
        ...

    def generation_budget_s(
        self, prompt_tokens: int, max_output_tokens: int, prefill_tokens: int | None = None
    ) -> Any:
        """The device-seconds the run's hold pays for a local generation of at most ``prompt_tokens``
        in (``prefill_tokens`` of them read now: all by default) and ``max_output_tokens`` out: a
        ``workers.runtime.decode.Allowance`` that grows the hold as decoding goes on, or a float
        limit; None: unbounded (device time is free)."""
        ...

    def embed(self, texts: list[str]) -> Any:
        """``texts`` encoded by the pipeline's sentence embedder in one call: (N, D) float32, L2-normalised;
        the hold grows by the call's bound first and the call is billed (an ``embed`` row)."""
        ...

    def count_tokens(self, prompt: list[dict[str, Any]] | str) -> int:
        """The endpoint's tokens of a chat prompt (messages) or of a text, without running its model."""
        ...


def _ignore_progress(done: int, total: int, message: str) -> None:
    pass


def _ignore_token(piece: str) -> None:
    pass


def run_pipeline(
    *,
    question: str,
    config: PipelineConfig,
    hooks: PipelineHooks,
    progress: ProgressFn = _ignore_progress,
    on_token: TokenFn = _ignore_token,
    history: list[dict[str, Any]] | None = None,
) -> PipelineResult:
    """Answer ``question`` with the pipeline: over its fixed context when it has one, else by RAG.

    ``history``: the conversation's earlier turns (user and assistant messages, already fitted to the
    pipeline's history budget: ``workers.rag.history.history_fit``). A follow-up retrieves with the
    previous question and this one (``retrieval_query``) and its prompt carries the history before the
    question. Strategies that run the model themselves (superposition), extractive answers and fixed
    contexts answer the question alone."""
    if config.fixed_context:
        return _answer_fixed_context(question=question, config=config, hooks=hooks, progress=progress,
                                     on_token=on_token)
    return _answer_with_retrieval(question=question, config=config, hooks=hooks, progress=progress,
                                  on_token=on_token, history=history or [])


def run_direct(
    *,
    messages: list[dict[str, Any]],
    hooks: PipelineHooks,
    progress: ProgressFn = _ignore_progress,
    on_token: TokenFn = _ignore_token,
) -> PipelineResult:
    """A chat sent to the endpoint as it is (no pipeline): one metered call, no citations, no baseline."""
    progress(2, STEPS, "generating")
    call = hooks.generate(messages, on_token)
    return PipelineResult(answer=call.text, finish_reason=call.finish_reason,
                          repetition_tokens_saved=getattr(call, "repetition_tokens_saved", 0))


def _answer_with_retrieval(
    *, question: str, config: PipelineConfig, hooks: PipelineHooks, progress: ProgressFn, on_token: TokenFn,
    history: list[dict[str, Any]] | None = None,
) -> PipelineResult:
    from workers.compression import pipeline_method
    from workers.prompting import get_strategy
    from workers.rag.history import retrieval_query, with_history
    from workers.runtime.meter import count_chat_tokens, count_tokens

    history = history or []
    progress(0, STEPS, "retrieving")
    # A follow-up retrieves with the previous question too (workers.rag.history); none: retrieval-free.
    chunks = hooks.retrieve(retrieval_query(question, history), config.top_k)
    passages = [Passage(chunk_id=chunk.chunk_id, title=chunk.title, text=chunk.text) for chunk in chunks]
    confidence, abstained = _retrieval_check(chunks, config)
    if abstained is not None:
        return abstained
    strategy = get_strategy(config.prompting_strategy, config.prompting_options)
    if getattr(strategy, "extractive", False) and passages:  # no passages: the generator answers as usual
        quoted = _answer_extractively(question=question, config=config, hooks=hooks, chunks=chunks,
                                      passages=passages, strategy=strategy, progress=progress, on_token=on_token)
        # A quote is verbatim from its passages, so token overlap alone shows its support: no second
        # embedding is billed for the check.
        return with_quality(quoted, question=question, chunks=chunks, config=config, hooks=None, confidence=confidence)

    # Only a pipeline that compresses says so; the model may load here on a cold start (the hooks say that).
    progress(1, STEPS, "compressing" if config.compression_method != "none" else "building the prompt")
    target = hooks.model()
    # The pipeline's own model summarizes (and scores, when local).
    method = pipeline_method(
        config.compression_method,
        target=target,
        cache_dir=config.compression_cache_dir,
        model_cache_dir=config.model_cache_dir,
    )
    count = lambda text: count_tokens(target, text)  # noqa: E731 - the methods take a plain callable
    # The stage's bound before it runs (no model runs to plan it): the hold grows by it, and each
    # model call the method then makes grows it again before it runs (``on_model_call``).
    plan = method.plan(query=question, passages=passages, target=config.compression_target, count_tokens=count)
    plan.on_model_call = hooks.compression_planned(plan)
    compressed = method.compress(
        query=question, passages=passages, target=config.compression_target, count_tokens=count, plan=plan
    )
    if config.compression_method != "none" and (compressed.compute_s or compressed.model_prompt_tokens):
        # Tokens read by a helper model that is not the endpoint's (the local surprisal scorer
        # beside a remote endpoint) are not the endpoint's tokens: that work is billed as CPU time.
        own_names = ("", getattr(target, "name", None), getattr(target, "display_name", None))
        own_model = compressed.model in own_names
        hooks.bill_compression(
            prompt_tokens=compressed.model_prompt_tokens if own_model else 0,
            completion_tokens=compressed.model_completion_tokens if own_model else 0,
            compute_s=compressed.compute_s,
        )

    progress(2, STEPS, "generating")
    call: Generated
    if getattr(strategy, "runs_model", False) and compressed.passages:
        model = hooks.local_model()
        if model is None:
            raise PipelineError(
                f"prompting strategy {strategy.name!r} needs a local model; {config.model_name!r} is not one"
            )
        store = hooks.kv_store()

        def path_bound(kept: list[Passage]) -> int:
            return int(strategy.prompt_tokens_bound(  # type: ignore[attr-defined]
                model=model, system_prompt=config.system_prompt, question=question, passages=kept
            ))

        kept = fit_passages(list(compressed.passages), path_bound, config.max_prompt_tokens)
        if not kept:
            raise PipelineError(f"the question leaves no room for a passage within {config.max_prompt_tokens} "
                                "prompt tokens (the model's window less max_tokens, or the ceiling)")
        bound = path_bound(kept)
        # The hold is enforced: the strategy stops with "budget" where the run's reservation ends.
        call = hooks.metered(lambda: strategy.generate(  # type: ignore[attr-defined]
            model=model,
            system_prompt=config.system_prompt,
            question=question,
            passages=kept,
            max_output_tokens=config.max_output_tokens,
            wall_time_limit_s=config.wall_time_limit_s,
            on_token=on_token,
            kv_store=store,
            budget_s=hooks.generation_budget_s(bound, config.max_output_tokens),
            decoding=decoding_settings(getattr(model, "name", ""), config.decoding),
        ))
    else:
        def build(kept: list[Passage]) -> list[dict[str, Any]]:
            return with_history(
                strategy.build_messages(system_prompt=config.system_prompt, question=question, passages=kept),
                history,
            )

        kept = fit_passages(list(compressed.passages), lambda kept: count_chat_tokens(target, build(kept)),
                            config.max_prompt_tokens)
        call = hooks.generate(build(kept), on_token)
    # The baseline: naive RAG, same model, every retrieved chunk uncompressed.
    naive = with_history(get_strategy("naive").build_messages(system_prompt=config.system_prompt,
                                                              question=question, passages=passages), history)
    return with_quality(PipelineResult(
        answer=call.text,
        finish_reason=call.finish_reason,
        citations=citations(chunks, call.text),
        baseline_prompt_tokens=count_chat_tokens(target, naive),
        context_tokens_before=compressed.tokens_before,
        context_tokens_after=compressed.tokens_after,
        repetition_tokens_saved=getattr(call, "repetition_tokens_saved", 0),
    ), question=question, chunks=chunks, config=config, hooks=hooks, confidence=confidence,
        logprobs=getattr(call, "token_logprobs", None))


def _retrieval_check(
    chunks: list[RetrievedChunk], config: PipelineConfig
) -> tuple[float | None, PipelineResult | None]:
    """(the retrieval confidence, the abstention when the pipeline abstains below it, else None)."""
    from workers.rag import quality

    best = quality.best_hit_score([(chunk.score, chunk.retrievers) for chunk in chunks])
    confidence = quality.retrieval_confidence(best, config.retrieval_reference)
    if not quality.should_abstain(confidence, config.abstain_below):
        return confidence, None
    _, assessed = quality.assess(answer=quality.ABSTAIN_ANSWER, finish_reason=quality.ABSTAIN_FINISH_REASON,
                                 passages=[], retrieval_confidence=confidence)
    return confidence, PipelineResult(
        answer=quality.ABSTAIN_ANSWER, finish_reason=quality.ABSTAIN_FINISH_REASON,
        citations=citations(chunks, ""), quality=assessed.as_dict(),
    )


def with_quality(
    result: PipelineResult, *, question: str, chunks: list[RetrievedChunk], config: PipelineConfig,
    hooks: PipelineHooks | None, confidence: float | None, logprobs: list[float] | None = None,
) -> PipelineResult:
    """``result`` with its answer's invalid citation markers removed and its quality signals; the cosine
    part embeds through the service's metered ``embed_for_quality`` hook when it has one. ``logprobs``: the
    generated tokens' log-probabilities (a local model's; None when unknown)."""
    from workers.rag import quality

    if result.finish_reason == "cancelled":  # stopped by its user: nothing more is spent on it
        result.citations = citations(chunks, result.answer)
        return result
    score_alone = getattr(hooks, "question_only_logprobs", None)
    question_only = None
    if config.quality_grounding and score_alone is not None and logprobs:
        stopped = result.finish_reason == "stop"

        def question_only(answer: str) -> Any:
            return score_alone(question=question, answer=answer, stopped=stopped)

    answer, assessed = quality.assess(
        answer=result.answer, finish_reason=result.finish_reason, passages=[chunk.text for chunk in chunks],
        embed=getattr(hooks, "embed_for_quality", None), question=question, retrieval_confidence=confidence,
        thresholds=config.quality_thresholds or quality.Thresholds(), token_logprobs=logprobs,
        question_only=question_only,
    )
    result.answer, result.quality = answer, assessed.as_dict()
    result.citations = citations(chunks, answer)
    return result


def fit_passages(
    passages: list[Passage], count: Callable[[list[Passage]], int], limit: int | None
) -> list[Passage]:
    """The longest head of ``passages`` (ranked best first) whose prompt (``count``: its tokens) fits
    ``limit`` (None: all of them): the lowest-ranked passages are dropped first, whole. Bisects on the
    number kept, so a prompt is counted O(log n) times. Kept empty when the question alone passes the
    limit (the metered call then refuses it: ``apps.costs.tokens.prompt_check``)."""
    if limit is None or not passages or count(passages) <= limit:
        return passages
    lo, hi = 0, len(passages) - 1  # the most kept that may fit lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(passages[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return passages[:lo]


def citations(chunks: list[RetrievedChunk], answer: str) -> list[dict[str, Any]]:
    """One citation per retrieved chunk, numbered as the prompt numbers passages; ``cited`` when the
    answer mentions ``[n]``."""
    return [
        {
            "n": n,
            "chunk_id": chunk.chunk_id,
            "document_id": chunk.document_id,
            "document_title": chunk.title,
            "start": chunk.start,
            "end": chunk.end,
            "snippet": chunk.text[:300],
            "score": round(float(chunk.score), 6),
            # One shape with the search API's hits: {"dense": {"rank": 1, "score": 0.91}} (docs/api.md).
            "retrievers": {
                name: {"rank": rank, "score": round(float(score), 6)}
                for name, (rank, score) in chunk.retrievers.items()
            },
            "cited": f"[{n}]" in answer,
        }
        for n, chunk in enumerate(chunks, start=1)
    ]


def _answer_extractively(
    *, question: str, config: PipelineConfig, hooks: PipelineHooks, chunks: list[RetrievedChunk],
    passages: list[Passage], strategy: Any, progress: ProgressFn, on_token: TokenFn,
) -> PipelineResult:
    """The best sentence(s) of the passages, quoted with their ``[n]`` (``workers.prompting.extractive_answer``):
    one metered encode, no compression, no generation; the endpoint's model is never loaded. The baseline
    is naive RAG's generation over the same passages, with as many output tokens as the quoted answer, at
    most the pipeline's cap (a naive answer cannot be longer)."""
    progress(2, STEPS, "choosing the best sentence")
    result = strategy.answer(question=question, passages=passages, encode=hooks.embed)
    if result.text:
        on_token(result.text)
    naive = strategy.build_messages(system_prompt=config.system_prompt, question=question, passages=passages)
    return PipelineResult(
        answer=result.text,
        finish_reason=result.finish_reason,
        citations=citations(chunks, result.text),
        baseline_prompt_tokens=hooks.count_tokens(naive),
        baseline_completion_tokens=min(hooks.count_tokens(result.text), config.max_output_tokens),
    )


def _answer_fixed_context(
    *, question: str, config: PipelineConfig, hooks: PipelineHooks, progress: ProgressFn, on_token: TokenFn
) -> PipelineResult:
    """Only the user's tokens are prefilled: the fixed context comes from the KV store (or is
    prefilled now, e.g. after an eviction) and is read through the pipeline's attention backend."""
    from workers.attention.fixed_context import FixedContextConfig, answer, answer_prompt_parts

    progress(1, STEPS, "loading the fixed context")
    model = hooks.local_model()
    if model is None:
        raise PipelineError(f"a fixed context is answered by a local model; {config.model_name!r} is not one")
    text = hooks.fixed_context_text()
    if not text.strip():
        raise PipelineError(f"pipeline {config.name!r} has an empty fixed context")

    fixed = FixedContextConfig(max_context_tokens=config.fixed_context_max_tokens)

    def generate() -> Any:
        progress(2, STEPS, "generating")
        context_tokens, user_tokens = answer_prompt_parts(
            model, system_prompt=config.system_prompt, context_text=text, question=question, config=fixed
        )
        return answer(
            model,
            store=hooks.kv_store(),
            system_prompt=config.system_prompt,
            context_text=text,
            question=question,
            backend=config.attention_backend,
            options=config.attention_options or {},
            max_output_tokens=config.max_output_tokens,
            wall_time_limit_s=config.wall_time_limit_s,
            on_token=on_token,
            config=fixed,
            # The hold is enforced: the answer stops with "budget" where the run's reservation ends.
            # The context is normally cached (prefilled when the pipeline was saved): the hold starts
            # from the user's tokens and grows if the context must be prefilled again.
            budget_s=hooks.generation_budget_s(
                context_tokens + user_tokens, config.max_output_tokens, prefill_tokens=user_tokens
            ),
            decoding=decoding_settings(getattr(model, "name", ""), config.decoding),
        )

    result = hooks.metered(generate)
    return PipelineResult(
        answer=result.text,
        finish_reason=result.finish_reason,
        # The baseline: the same prompt with nothing cached (the whole fixed context prefilled per question).
        baseline_prompt_tokens=result.prompt_tokens,
        context_tokens_before=result.context_tokens + result.truncated_tokens,
        context_tokens_after=result.context_tokens,
        repetition_tokens_saved=getattr(result, "repetition_tokens_saved", 0),
    )


__all__ = [
    "Generated",
    "PipelineConfig",
    "PipelineError",
    "PipelineHooks",
    "PipelineResult",
    "RetrievedChunk",
    "citations",
    "run_direct",
    "run_pipeline",
    "with_quality",
]
