"""Answering questions over a long fixed context whose KV is computed once (no Django here).

A pipeline's fixed context (a handbook, a contract) sits at the start of every prompt, so its KV
is prefilled once (`prepare_fixed_context`, offline) into `indexes.kv_store` with each attention
backend's index. A question (`answer`) then runs only the user's tokens, at positions after the
context, and decodes greedily; the context's KV stays outside the model's cache, and the
backend (`workers.attention`) reads from it only the keys it picks. Layout, jobs and billing:
docs/attention.md.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from indexes.kv_store import KVEntry, KVKey, KVStore, text_hash
from workers.attention import backend_config, get_backend
from workers.attention.base import (
    CAPTURE_KWARG,
    STATE_KWARG,
    Diagnostics,
    QueryCapture,
    attention_implementation,
)
from workers.attention.reference import FixedKV
from workers.runtime.decode import Allowance, PrefillStopped, as_allowance, decode, decoding_pick, eos_ids
from workers.runtime.decoding import DecodingSettings
from workers.runtime.device_clock import device_clock
from workers.runtime.local_lm import LoadedModel
from workers.runtime.memory import pin_mmap_threshold
from workers.runtime.meter import GenerationResult

if TYPE_CHECKING:
    import torch

# Bumped whenever the prompt layout or the stored tensors' meaning changes: old entries then miss.
LAYOUT_VERSION = "fixed-context-v1"
INSTRUCTION = "Answer the question using the document below. Be brief."
_SENTINEL = "\x00PARSIMONY-DOCUMENT\x00"
QUERIES_ARTIFACT = "queries"

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)


@dataclass(frozen=True)
class FixedContextConfig:
    max_context_tokens: int | None = None  # None: the model's positions minus `reserve_tokens`
    reserve_tokens: int = 512  # positions left for the question and the answer
    prefill_chunk: int = 512  # fixed-context tokens per forward during the prefill
    query_samples: int = 512  # prefill queries kept (strided) for the attention-aware index
    proxy_tokens: int = 64  # last tokens' queries kept for the squeezed threshold
    instruction: str = INSTRUCTION


# ============================================================================ 1. prompt


@dataclass(frozen=True)
class FixedContextPrompt:
    context_ids: list[int]  # the cached part: template head + instruction + document
    tail: str  # the chat template after the user message (end of turn, assistant start)
    document_tokens: int  # document tokens kept
    truncated_tokens: int  # document tokens dropped to fit the model


def build_context(
    tokenizer: Any, *, system_prompt: str, context_text: str, max_positions: int,
    config: FixedContextConfig = FixedContextConfig(),  # noqa: B008 - frozen dataclass
) -> FixedContextPrompt:
    """Split the chat template around the document; truncate the document to fit the model."""
    messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": f"{config.instruction}\n\nDocument:\n{_SENTINEL}"})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not keep the user message verbatim")
    head, tail = text.split(_SENTINEL)
    head_ids = list(tokenizer.encode(head, add_special_tokens=False))
    doc_ids = list(tokenizer.encode(context_text.strip(), add_special_tokens=False))
    limit = config.max_context_tokens or (max_positions - config.reserve_tokens)
    budget = max(0, limit - len(head_ids))
    if not doc_ids:
        raise ValueError("the fixed context is empty")
    kept = doc_ids[:budget]
    return FixedContextPrompt(head_ids + kept, tail, len(kept), len(doc_ids) - len(kept))


def user_ids(tokenizer: Any, prompt: FixedContextPrompt, question: str) -> list[int]:
    """The user's tokens: the question and the end of the chat template (the generation prompt)."""
    return list(tokenizer.encode(f"\n\nQuestion: {question.strip()}{prompt.tail}", add_special_tokens=False))


def _model_key(lm: LoadedModel) -> str:
    return f"{lm.name}-{str(lm.model.dtype).removeprefix('torch.')}"


def context_key(lm: LoadedModel, context_ids: list[int]) -> KVKey:
    digest = text_hash(LAYOUT_VERSION, _model_key(lm), ",".join(map(str, context_ids)))
    return KVKey(model=_model_key(lm), preamble_hash=digest, chunk_id=None)


def max_positions(lm: LoadedModel) -> int:
    return int(getattr(lm.model.config, "max_position_embeddings", 0) or 8192)


# ============================================================================ 2. prefill (offline)


def sample_positions(n: int, config: FixedContextConfig) -> list[int]:
    """Positions whose queries are kept: a strided sample of [0, N - proxy) and the last `proxy` tokens."""
    proxy = min(config.proxy_tokens, n)
    head = n - proxy
    k = min(config.query_samples, head)
    strided = sorted({int(i * head / k) for i in range(k)}) if k else []
    return strided + list(range(head, n))


def prefill_context(
    lm: LoadedModel, ids: list[int], config: FixedContextConfig, progress: Progress | None = None,
    deadline: float | None = None,
) -> tuple[KVEntry, torch.Tensor, list[int]]:
    """Run the fixed context through the model (chunked, full attention, causal).

    -> (its KV as a KVEntry, sampled queries (L, H, P, D), their positions). `deadline` (a
    `time.perf_counter()` value; None: none, as for the offline precompute) is checked between
    chunks: passed, `PrefillStopped`. Caller holds the model lock and inference mode.
    """
    import torch
    from transformers import DynamicCache

    pin_mmap_threshold()  # else the growing per-chunk buffers fragment the heap (workers/runtime/memory.py)
    model = lm.model
    n_layers = model.config.num_hidden_layers
    positions = sample_positions(len(ids), config)
    capture = QueryCapture(positions, n_layers)
    cache = DynamicCache(config=model.config)
    with attention_implementation(model):
        for start in range(0, len(ids), config.prefill_chunk):
            if deadline is not None and start > 0 and time.perf_counter() > deadline:
                raise PrefillStopped(prefilled=start, total=len(ids))
            chunk = torch.tensor([ids[start:start + config.prefill_chunk]], device=lm.device)  # (1, C)
            # Positions and the causal mask follow from the cache's length (registered mask function).
            model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1, **{CAPTURE_KWARG: capture})
            if progress is not None:
                progress(min(1.0, (start + chunk.shape[1]) / len(ids)), "prefilling the fixed context")
    assert cache.get_seq_length() == len(ids)
    layers: list[Any] = list(cache.layers)  # full-attention layers: .keys / .values (1, KVH, N, D)
    entry = KVEntry(
        keys=[layer.keys[0].cpu().contiguous() for layer in layers],  # (KVH, N, D) each, post-RoPE
        values=[layer.values[0].cpu().contiguous() for layer in layers],
        token_ids=list(ids),
        meta={"layout": LAYOUT_VERSION, "start": "0"},
    )
    return entry, capture.stacked(), positions


# ============================================================================ 3. store + process cache


@dataclass
class LoadedContext:
    key: KVKey
    fixed: FixedKV
    queries: torch.Tensor | None  # (L, H, P, D) sampled prefill queries (last P' are the proxies)
    positions: list[int]


_contexts: OrderedDict[tuple[str, str], LoadedContext] = OrderedDict()
_indexes: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()
_MAX_CONTEXTS = 2
_MAX_INDEXES = 6


def clear_process_cache() -> None:
    """Forget the fixed contexts and indexes held in memory (tests; freeing a worker's memory)."""
    with _cache_lock:
        _contexts.clear()
        _indexes.clear()


def _remember(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    with _cache_lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)


def _recall(cache: OrderedDict, key: Any) -> Any:
    with _cache_lock:
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
        return value


def _store_id(store: KVStore | None) -> str:
    return str(store.root) if store is not None else ""


@dataclass
class _Ensured:
    value: Any
    hit: bool
    seconds: float


def ensure_context(
    lm: LoadedModel, store: KVStore | None, ids: list[int], config: FixedContextConfig,
    progress: Progress | None = None, deadline: float | None = None,
) -> _Ensured:
    """The fixed context's KV and sampled queries: memory, else the store, else a prefill (stored) that
    stops at `deadline` (`prefill_context`)."""
    import torch

    key = context_key(lm, ids)
    mem_key = (_store_id(store), str(key.relative_path()))
    loaded = _recall(_contexts, mem_key)
    if loaded is not None:
        return _Ensured(loaded, True, 0.0)
    if store is not None:
        entry = store.get(key)
        stored_queries = store.get_artifact(key, QUERIES_ARTIFACT)
        n_layers = lm.model.config.num_hidden_layers
        if entry is not None and entry.token_ids == ids and len(entry.keys) == n_layers and stored_queries is not None:
            tensors, _ = stored_queries
            loaded = LoadedContext(key, FixedKV(entry.keys, entry.values), tensors["queries"].float(),
                                   tensors["positions"].tolist())
            _remember(_contexts, mem_key, loaded, _MAX_CONTEXTS)
            return _Ensured(loaded, True, 0.0)
        if entry is not None and entry.token_ids != ids:  # a foreign file under our key
            store.delete(key)
    clock = device_clock(lm.device)  # the prefill is billed by its device-seconds
    started = clock()
    entry, queries, positions = prefill_context(lm, ids, config, progress, deadline)
    seconds = clock() - started
    if store is not None:
        store.put(key, entry)
        store.put_artifact(key, QUERIES_ARTIFACT, {
            "queries": queries.half(), "positions": torch.tensor(positions, dtype=torch.int64)})
    loaded = LoadedContext(key, FixedKV(entry.keys, entry.values), queries.half().float(), positions)
    _remember(_contexts, mem_key, loaded, _MAX_CONTEXTS)
    return _Ensured(loaded, False, seconds)


def index_name(backend: Any) -> str:
    params = backend.config.build_params()
    return f"{backend.name}-{text_hash(json.dumps(params, sort_keys=True))[:12]}"


def ensure_index(
    backend: Any, ctx: LoadedContext, store: KVStore | None, progress: Progress | None = None
) -> _Ensured:
    """The backend's index over this context: memory, else the store, else built now (and stored)."""
    if not backend.needs_index:
        return _Ensured(None, True, 0.0)
    name = index_name(backend)
    mem_key = (_store_id(store), str(ctx.key.relative_path()), name)
    index = _recall(_indexes, mem_key)
    if index is not None:
        return _Ensured(index, True, 0.0)
    if store is not None:
        got = store.get_artifact(ctx.key, name)
        if got is not None:
            try:
                index = backend.from_tensors(got[0], ctx.fixed)
            except (AssertionError, KeyError, ValueError, RuntimeError):
                store.delete_artifact(ctx.key, name)  # stale or foreign: rebuild
                index = None
            if index is not None:
                _remember(_indexes, mem_key, index, _MAX_INDEXES)
                return _Ensured(index, True, 0.0)
    assert ctx.queries is not None, "index builds need the prefill's sampled queries"
    started = time.perf_counter()

    def layer_progress(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, f"building the {backend.name} index")

    index = backend.build(ctx.fixed, ctx.queries, layer_progress)
    seconds = time.perf_counter() - started
    if store is not None:
        store.put_artifact(ctx.key, name, backend.to_tensors(index),
                           {"backend": backend.name, "params": json.dumps(backend.config.build_params())})
    _remember(_indexes, mem_key, index, _MAX_INDEXES)
    return _Ensured(index, False, seconds)


def prepare_fixed_context(
    lm: LoadedModel,
    store: KVStore | None,
    *,
    system_prompt: str,
    context_text: str,
    backends: list[tuple[str, dict[str, Any]]],
    config: FixedContextConfig = FixedContextConfig(),  # noqa: B008 - frozen dataclass
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Prefill the fixed context into the store and build each backend's index. Idempotent.

    -> a report: token counts, whether each piece was computed now, seconds, bytes in the store.
    """
    import torch

    prompt = build_context(lm.tokenizer, system_prompt=system_prompt, context_text=context_text,
                           max_positions=max_positions(lm), config=config)
    parts = 1 + len(backends)

    def scaled(step: int) -> Progress | None:
        if progress is None:
            return None
        return lambda fraction, message: progress((step + fraction) / parts, message)

    with lm.lock, torch.inference_mode():
        ctx = ensure_context(lm, store, prompt.context_ids, config, scaled(0))
        report: dict[str, Any] = {
            "context_tokens": len(prompt.context_ids),
            "document_tokens": prompt.document_tokens,
            "truncated_tokens": prompt.truncated_tokens,
            "kv_computed": not ctx.hit,
            "prefill_s": round(ctx.seconds, 3),
            "indexes": {},
        }
        for i, (name, options) in enumerate(backends, start=1):
            backend = get_backend(name, **options)
            got = ensure_index(backend, ctx.value, store, scaled(i))
            if backend.needs_index:
                report["indexes"][index_name(backend)] = {"computed": not got.hit, "build_s": round(got.seconds, 3)}
    if progress is not None:
        progress(1.0, "ready")
    if store is not None:
        folder = store.path_for(ctx.value.key).parent
        report["stored_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return report


# ============================================================================ 4. answering


def forward_user(lm: LoadedModel, state: Any, cache: Any, ids: list[int], start: int) -> torch.Tensor:
    """Run user tokens `ids` at positions start, start+1, ... over the fixed context held by `state`.

    `cache` (a DynamicCache) holds the user's earlier tokens only and grows by `ids`. Returns the
    last position's logits (V,). Caller: model lock, inference mode, `attention_implementation`.
    """
    import torch

    device = lm.device
    input_ids = torch.tensor([ids], device=device)  # (1, U)
    position_ids = torch.arange(start, start + len(ids), device=device)[None]  # (1, U)
    out = lm.model(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True,
                   logits_to_keep=1, **{STATE_KWARG: state})
    return out.logits[0, -1]


@dataclass
class FixedContextResult(GenerationResult):
    """A GenerationResult (bill it like one) plus what the backend attended and where time went."""

    backend: str = "full"
    context_tokens: int = 0
    user_tokens: int = 0
    truncated_tokens: int = 0
    keys_fraction: float = math.nan  # fixed-context keys attended per decoding step (mean over layers, heads)
    prefill_keys_fraction: float = math.nan  # the same for the user's tokens
    step_s: list[float] = field(default_factory=list)  # wall seconds per decoding step
    # CPU seconds of this process per decoding step: what the step itself computed, without the time
    # other processes held the cores (about the wall time on a quiet machine with one torch thread).
    step_cpu_s: list[float] = field(default_factory=list)
    ttft_s: float = math.nan
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def fresh_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def decode_ms_per_token(self) -> float:
        return 1000 * statistics.median(self.step_s) if self.step_s else math.nan

    @property
    def decode_cpu_ms_per_token(self) -> float:
        return 1000 * statistics.median(self.step_cpu_s) if self.step_cpu_s else math.nan


def answer_prompt_tokens(
    lm: LoadedModel, *, system_prompt: str, context_text: str, question: str,
    config: FixedContextConfig = FixedContextConfig(),  # noqa: B008 - frozen dataclass
) -> int:
    """The prompt tokens `answer` bills for this question: the fixed context (as truncated) and the user's."""
    return sum(answer_prompt_parts(lm, system_prompt=system_prompt, context_text=context_text, question=question,
                                   config=config))


def answer_prompt_parts(
    lm: LoadedModel, *, system_prompt: str, context_text: str, question: str,
    config: FixedContextConfig = FixedContextConfig(),  # noqa: B008 - frozen dataclass
) -> tuple[int, int]:
    """(fixed-context tokens (as truncated), the user's tokens) of `answer`'s prompt: a cached context
    is not prefilled again, so only the user's tokens are read per question."""
    prompt = build_context(lm.tokenizer, system_prompt=system_prompt, context_text=context_text,
                           max_positions=max_positions(lm), config=config)
    return len(prompt.context_ids), len(user_ids(lm.tokenizer, prompt, question))


def answer(
    lm: LoadedModel,
    *,
    store: KVStore | None,
    system_prompt: str,
    context_text: str,
    question: str,
    backend: str = "full",
    options: dict[str, Any] | None = None,
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None = None,
    config: FixedContextConfig = FixedContextConfig(),  # noqa: B008 - frozen dataclass
    diagnostics: Diagnostics | None = None,
    budget_s: float | Allowance | None = None,
    decoding: DecodingSettings | None = None,
) -> FixedContextResult:
    """Answer `question` over the fixed context with an attention backend, streaming; `decoding` (the
    pipeline's settings: degeneration guard, penalties, stop strings, sampling; None: the defaults, greedy)
    applies as in the meter's generations.

    Like meter.generate: the wall-time limit is checked after every generated token (at least
    one is produced); a failing `on_token` stops generation with finish_reason "error" while the
    usage is still reported. `budget_s` (the device-seconds the caller's hold still pays for;
    None: unbounded) bounds the compute, a fixed context prefilled now included: 0 runs nothing,
    decoding stops with "budget" before a step that would pass it, and the seconds reported are
    clamped to it (docs/costs.md, "The hold is enforced").
    """
    import torch
    from transformers import DynamicCache

    if max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
    if not wall_time_limit_s > 0:
        raise ValueError(f"wall_time_limit_s must be > 0, got {wall_time_limit_s}")
    budget = as_allowance(budget_s)  # ValueError when negative
    chosen = get_backend(backend, **(options or {}))
    called = time.perf_counter()
    if budget is not None and not budget.covers(1e-9):
        # The hold cannot pay for any compute: run nothing, bill nothing.
        return FixedContextResult(
            text="", finish_reason="budget", prompt_tokens=0, completion_tokens=0, cached_tokens=0,
            wall_s=time.perf_counter() - called, gpu_s=0.0, compute_s=0.0, model=lm.name,
            error="the hold covers no device time", backend=chosen.name,
        )
    tokenizer, model, device = lm.tokenizer, lm.model, lm.device
    prompt = build_context(tokenizer, system_prompt=system_prompt, context_text=context_text,
                           max_positions=max_positions(lm), config=config)
    u_ids = user_ids(tokenizer, prompt, question)
    n_ctx = len(prompt.context_ids)
    if n_ctx + len(u_ids) + max_output_tokens > max_positions(lm):
        max_output_tokens = max(1, max_positions(lm) - n_ctx - len(u_ids))
    on_cuda = device.startswith("cuda")
    timings: dict[str, float] = {}

    clock = device_clock(device)
    with lm.lock:
        t0, c0 = time.perf_counter(), clock()  # the wall-time deadline; the billed device-seconds
        with torch.inference_mode():
            try:
                ctx = ensure_context(lm, store, prompt.context_ids, config, deadline=t0 + wall_time_limit_s)
            except PrefillStopped as stopped:
                # The context had to be prefilled again and ran out of time: no answer, the compute billed.
                compute_s = clock() - c0
                if budget is not None:
                    compute_s = min(compute_s, budget.seconds)
                return FixedContextResult(
                    text="", finish_reason="time_limit", prompt_tokens=stopped.prefilled, completion_tokens=0,
                    cached_tokens=0, wall_s=time.perf_counter() - called, gpu_s=compute_s if on_cuda else 0.0,
                    compute_s=compute_s, model=lm.name, backend=chosen.name,
                    error=f"the fixed context's {stopped} (wall-time limit {wall_time_limit_s:g} s)",
                )
            timings["context_s"] = ctx.seconds
            idx = ensure_index(chosen, ctx.value, store)
            timings["index_s"] = idx.seconds
            state = chosen.state(ctx.value.fixed, idx.value, diagnostics)
            with attention_implementation(model):
                t1 = time.perf_counter()
                cache = DynamicCache(config=model.config)  # the user's tokens only
                first_logits = forward_user(lm, state, cache, u_ids, n_ctx)
                timings["user_prefill_s"] = time.perf_counter() - t1
                position = n_ctx + len(u_ids)

                def step(token: int) -> torch.Tensor:
                    nonlocal position
                    logits = forward_user(lm, state, cache, [token], position)
                    position += 1
                    return logits

                decoded = decode(first_logits=first_logits, step=step, tokenizer=tokenizer, eos=eos_ids(lm),
                                 max_new_tokens=max_output_tokens, deadline=t0 + wall_time_limit_s,
                                 on_token=on_token, budget_s=budget, compute_started=c0, clock=clock,
                                 decoding=decoding, pick=decoding_pick(lm, decoding))
        if on_cuda:
            torch.cuda.synchronize(device)
        compute_s = clock() - c0
    if budget is not None:
        # As the meter: what the last step overran its prediction by is not billed.
        compute_s = min(compute_s, budget.seconds)
    timings["decode_s"] = decoded.decode_s

    stats = state.stats
    return FixedContextResult(
        text=decoded.text,
        finish_reason=decoded.finish_reason,
        prompt_tokens=n_ctx + len(u_ids),
        completion_tokens=len(decoded.token_ids),
        cached_tokens=n_ctx if ctx.hit else 0,
        wall_s=time.perf_counter() - called,
        gpu_s=compute_s if on_cuda else 0.0,
        compute_s=compute_s,
        model=lm.name,
        error=decoded.error,
        repetition_tokens_saved=decoded.repetition_tokens_saved,
        backend=chosen.name,
        context_tokens=n_ctx,
        user_tokens=len(u_ids),
        truncated_tokens=prompt.truncated_tokens,
        keys_fraction=stats.fraction("decode"),
        prefill_keys_fraction=stats.fraction("prefill"),
        step_s=decoded.step_s,
        step_cpu_s=decoded.step_cpu_s,
        ttft_s=decoded.first_token_at - called,
        timings=timings,
        diagnostics=diagnostics.summary() if diagnostics is not None else {},
    )


__all__ = [
    "INSTRUCTION",
    "LAYOUT_VERSION",
    "FixedContextConfig",
    "FixedContextPrompt",
    "FixedContextResult",
    "LoadedContext",
    "answer",
    "answer_prompt_parts",
    "answer_prompt_tokens",
    "backend_config",
    "build_context",
    "clear_process_cache",
    "context_key",
    "ensure_context",
    "ensure_index",
    "forward_user",
    "index_name",
    "prefill_context",
    "prepare_fixed_context",
    "sample_positions",
    "user_ids",
]
