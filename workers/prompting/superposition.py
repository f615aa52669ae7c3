"""Superposition prompting (Merth et al., ICML 2024): documents in parallel paths, pruned before answering.

The prompt is a fork-join graph: a preamble P, one path (d_i, q_i) per retrieved document with
the question repeated on each, an answer node A. Paths never see each other, so the KV of
(P, d_i) does not depend on which other documents were retrieved and is computed once and
cached (`indexes.kv_store`); a query then runs only the question copies, scores the paths
(Bayesian saliency), keeps the top k and answers from them. Positions, answer modes and billing:
docs/prompting.md.

torch is imported inside the functions: the web process imports the strategy registry (for
names and validation) and must stay free of torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from indexes.kv_store import KVEntry, KVKey, KVStore, text_hash
from workers.prompting.base import Passage
from workers.prompting.naive import INSTRUCTION, NaivePrompting
from workers.runtime.decode import (
    Allowance,
    PrefillStopped,
    Step,
    as_allowance,
    decode,
    decoding_pick,
    eos_ids,
)
from workers.runtime.decoding import DecodingSettings
from workers.runtime.device_clock import device_clock
from workers.runtime.local_lm import LoadedModel
from workers.runtime.meter import GenerationResult

if TYPE_CHECKING:
    import torch

# Bumped whenever the segment layout or the stored KV's meaning changes: old entries then miss.
LAYOUT_VERSION = "superposition-v1"
_SENTINEL = "\x00PARSIMONY-CONTEXT\x00"
# RoPE variants whose frequencies do not depend on the sequence, so keys can be re-rotated.
_REROTATABLE_ROPE = {"default", "linear", "llama3", "yarn"}


@dataclass(frozen=True)
class SuperpositionConfig:
    top_k: int | None = 2  # paths kept for the answer; None keeps all
    positions: Literal["equalized", "integer"] = "equalized"
    # How the N query copies run: "batch" = a batch of N rows, each over P + d_i (padded to the
    # longest document); "flat" = one sequence of N*|q| tokens over P and all documents with a
    # block mask (every query token then also scores the other paths' keys, masked). Batch was
    # 17-25% faster on CPU with 10-20 documents (docs/benchmarks-superposition.md).
    query_batching: Literal["flat", "batch"] = "batch"
    doc_weight: float = 1.0  # w in score = logP(q|P,d) + w * logP(d|P)
    instruction: str = INSTRUCTION
    # What the answer node sees after pruning (see "Answer modes" in the module docstring):
    # "superposed" = the kept paths' cached KV at their shared positions (the paper);
    # "sequential" = the same cached KV, the kept paths moved one after another (best path last);
    # "recompute" = the kept documents recomputed as one prompt P + d_a + d_b + q + A (the cache
    # then only serves scoring; the answer equals naive RAG over the kept documents).
    answer_mode: Literal["superposed", "sequential", "recompute"] = "superposed"

    def __post_init__(self) -> None:
        # Pipelines build this from user-supplied JSON: refuse bad values when they are saved.
        checks = [
            (
                self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
                "top_k must be an integer >= 1 or null (keep all)",
            ),
            (self.positions in ("equalized", "integer"), "positions must be 'equalized' or 'integer'"),
            (self.query_batching in ("flat", "batch"), "query_batching must be 'flat' or 'batch'"),
            (
                isinstance(self.doc_weight, (int, float))
                and not isinstance(self.doc_weight, bool)
                and self.doc_weight >= 0,
                "doc_weight must be a number >= 0",
            ),
            (
                isinstance(self.instruction, str) and self.instruction.strip() != "",
                "instruction must be a non-empty string",
            ),
            (
                self.answer_mode in ("superposed", "sequential", "recompute"),
                "answer_mode must be 'superposed', 'sequential' or 'recompute'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ============================================================================ 1. segments


@dataclass(frozen=True)
class ForkJoinPrompt:
    """Token ids of the graph's nodes. The query is shared text, repeated on every path."""

    preamble: list[int]
    docs: list[list[int]]
    query: list[int]
    answer: list[int]
    doc_texts: list[str]


def format_document(passage: Passage) -> str:
    # Like the naive prompt without its "[n] " numbering: a path must not depend on its rank.
    return f"Title: {passage.title}\n{passage.text.strip()}\n"


def build_forkjoin(
    tokenizer: Any, *, system_prompt: str, question: str, passages: Sequence[Passage], instruction: str = INSTRUCTION
) -> ForkJoinPrompt:
    """Split the model's own chat template around the context into P, d_i, q and A.

    The text of P + d_1 + q + A is exactly the naive prompt for one passage (without "[1] ").
    """
    messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": f"{instruction}\n\nContext:\n{_SENTINEL}"})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not keep the user message verbatim")
    head, tail = text.split(_SENTINEL)
    doc_texts = [format_document(p) for p in passages]

    def encode(s: str) -> list[int]:
        return list(tokenizer.encode(s, add_special_tokens=False))

    return ForkJoinPrompt(
        preamble=encode(head),
        docs=[encode(d) for d in doc_texts],
        query=encode(f"\nQuestion: {question}"),
        answer=encode(tail),
        doc_texts=doc_texts,
    )


# ============================================================================ 2. positions


@dataclass(frozen=True)
class Layout:
    """Position ids of every node (floats when equalized). Stored KV always sits at |P| + j."""

    preamble_len: int
    doc_positions: list[list[float]]  # per path, (L_i,)
    query_positions: list[list[float]]  # per path, (|q|,)
    query_ends: list[float]  # per path: last query position + 1

    def answer_start(self, kept: Sequence[int]) -> float:
        return max(self.query_ends[i] for i in kept)


def layout_positions(preamble_len: int, doc_lengths: Sequence[int], query_len: int, mode: str) -> Layout:
    if mode == "equalized":
        harmonic = len(doc_lengths) / sum(1.0 / n for n in doc_lengths)  # H
        docs = [[preamble_len + j * harmonic / n for j in range(n)] for n in doc_lengths]
        query_start = [preamble_len + harmonic] * len(doc_lengths)
    elif mode == "integer":
        docs = [[float(preamble_len + j) for j in range(n)] for n in doc_lengths]
        query_start = [float(preamble_len + n) for n in doc_lengths]
    else:
        raise ValueError(f"positions must be 'equalized' or 'integer', got {mode!r}")
    queries = [[s + t for t in range(query_len)] for s in query_start]
    return Layout(preamble_len, docs, queries, [s + query_len for s in query_start])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_of(model: Any) -> Any:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        raise NotImplementedError(f"{type(model).__name__} has no rotary embedding: superposition needs RoPE")
    return rotary


def rerotate_keys(rotary: Any, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Keys computed at positions p (post-RoPE) -> the same keys at positions p + delta.

    RoPE rotates each (i, i + D/2) pair by angle p * inv_freq_i; rotations compose, so one more
    rotation by delta * inv_freq_i moves a key without recomputing it.
    keys: (KV heads, T, D); delta: (T,) float.
    """
    if getattr(rotary, "rope_type", "default") not in _REROTATABLE_ROPE:
        raise NotImplementedError(f"cannot re-rotate keys for rope type {rotary.rope_type!r}")
    work = keys.float()
    cos, sin = rotary(work, position_ids=delta.float()[None])  # (1, T, D) each
    scale = getattr(rotary, "attention_scaling", 1.0) or 1.0
    cos, sin = cos / scale, sin / scale  # the scaling was applied once already
    return (work * cos + _rotate_half(work) * sin).to(keys.dtype)


# ============================================================================ 3. document KV (cached)


def _mask(allowed: torch.Tensor, dtype: Any) -> torch.Tensor:
    """Boolean (B, Q, K) -> additive float mask (B, 1, Q, K): 0 where allowed, finfo.min elsewhere."""
    import torch

    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


def _cache(model: Any, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(layers, config=model.config)


def _mean_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of `targets` (..., T) under `logits` (..., T, V)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
    return logp.mean(dim=-1)


def compute_kv(lm: LoadedModel, ids: list[int], prefix: KVEntry | None) -> KVEntry:
    """Run `ids` after `prefix` (at positions |prefix| + j) and return the new tokens' KV.

    meta["logprob"]: mean log P(ids[j+1] | prefix, ids[:j+1]), the node's own likelihood.
    """
    import torch

    model, device = lm.model, lm.device
    past = prefix.n_tokens if prefix is not None else 0
    n = len(ids)
    cache = _cache(model, [] if prefix is None else [
        (k[None].to(device), v[None].to(device)) for k, v in zip(prefix.keys, prefix.values, strict=True)
    ])
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    position_ids = torch.arange(past, past + n, device=device)[None]  # (1, T)
    allowed = torch.ones(n, past + n, dtype=torch.bool, device=device).tril(diagonal=past)[None]  # (1, T, past+T)
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=_mask(allowed, model.dtype),
                cache=cache, use_cache=True)
    logprob = float(_mean_logprob(out.logits[0, :-1], input_ids[0, 1:])) if n > 1 else 0.0
    layers = out.cache.layers
    return KVEntry(
        keys=[layer.keys[0, :, past:].cpu() for layer in layers],  # (KV heads, T, D) each
        values=[layer.values[0, :, past:].cpu() for layer in layers],
        token_ids=list(ids),
        meta={"logprob": repr(logprob), "start": str(past)},
    )


@dataclass
class _Fetch:
    entry: KVEntry
    hit: bool
    compute_s: float


def _model_key(lm: LoadedModel) -> str:
    return f"{lm.name}-{str(lm.model.dtype).removeprefix('torch.')}"


def fetch_kv(
    lm: LoadedModel, store: KVStore | None, key: KVKey, ids: list[int], prefix: KVEntry | None
) -> _Fetch:
    """The KV of `ids` after `prefix`: from the store when it holds a valid copy, else computed (and stored)."""
    if store is not None:
        entry = store.get(key)
        expected_start = str(prefix.n_tokens if prefix is not None else 0)
        if entry is not None and entry.token_ids == ids and entry.meta.get("start") == expected_start \
                and len(entry.keys) == lm.model.config.num_hidden_layers:
            return _Fetch(entry, True, 0.0)
        if entry is not None:  # same key, different content: a stale or foreign file
            store.delete(key)
    clock = device_clock(lm.device)  # a path's prefill is billed by its device-seconds
    started = clock()
    entry = compute_kv(lm, ids, prefix)
    compute_s = clock() - started
    if store is not None:
        store.put(key, entry)
    return _Fetch(entry, False, compute_s)


def preamble_key(lm: LoadedModel, preamble: list[int]) -> KVKey:
    digest = text_hash(LAYOUT_VERSION, _model_key(lm), ",".join(map(str, preamble)))
    return KVKey(model=_model_key(lm), preamble_hash=digest, chunk_id=None)


def document_key(pkey: KVKey, passage: Passage, doc_text: str) -> KVKey:
    return KVKey(model=pkey.model, preamble_hash=pkey.preamble_hash, chunk_id=passage.chunk_id,
                 text_hash=text_hash(doc_text))


# ============================================================================ 4. query paths (query time)


def forward_queries(
    lm: LoadedModel,
    preamble: KVEntry,
    docs: list[tuple[list[torch.Tensor], list[torch.Tensor]]],
    query: list[int],
    layout: Layout,
    batching: str,
) -> tuple[torch.Tensor, list[tuple[list[torch.Tensor], list[torch.Tensor]]]]:
    """Run every path's copy of the query at once. Returns (mean log P(q_i | P, d_i) per path (N,),
    per path the query's (keys, values) per layer, each (KV heads, |q|, D)).

    `docs`: per path the document's (keys, values) per layer, already at the layout's positions.
    """
    import torch

    model, device = lm.model, lm.device
    n_paths, n_q, n_p = len(docs), len(query), preamble.n_tokens
    doc_lens = [d[0][0].shape[1] for d in docs]
    n_layers = len(preamble.keys)
    q_ids = torch.tensor(query, device=device)
    causal_q = torch.ones(n_q, n_q, dtype=torch.bool, device=device).tril()  # (|q|, |q|)

    if batching == "flat":
        # One sequence of N*|q| query tokens over [P, d_1..d_N]; block mask keeps paths apart.
        n_docs = sum(doc_lens)
        layers = [
            (torch.cat([preamble.keys[i]] + [d[0][i] for d in docs], dim=1)[None].to(device),  # (1, KVH, |P|+ΣL, D)
             torch.cat([preamble.values[i]] + [d[1][i] for d in docs], dim=1)[None].to(device))
            for i in range(n_layers)
        ]
        allowed = torch.zeros(n_paths * n_q, n_p + n_docs + n_paths * n_q, dtype=torch.bool, device=device)
        allowed[:, :n_p] = True
        offset = n_p
        for p, length in enumerate(doc_lens):
            rows = slice(p * n_q, (p + 1) * n_q)
            allowed[rows, offset:offset + length] = True
            q0 = n_p + n_docs + p * n_q
            allowed[rows, q0:q0 + n_q] = causal_q
            offset += length
        input_ids = q_ids.repeat(n_paths)[None]  # (1, N*|q|)
        position_ids = torch.tensor([x for qp in layout.query_positions for x in qp], device=device)[None]  # (1, N*|q|)
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=_mask(allowed[None], model.dtype),
                    cache=_cache(model, layers), use_cache=True)
        logits = out.logits[0].view(n_paths, n_q, -1)  # (N, |q|, V)
        start = n_p + n_docs
        query_kv = [
            ([layer.keys[0, :, start + p * n_q:start + (p + 1) * n_q] for layer in out.cache.layers],
             [layer.values[0, :, start + p * n_q:start + (p + 1) * n_q] for layer in out.cache.layers])
            for p in range(n_paths)
        ]
    elif batching == "batch":
        # A batch of N sequences, each [P, d_i, padding]; the padding is masked out.
        width = max(doc_lens)

        def padded(t: torch.Tensor) -> torch.Tensor:  # (KVH, L_i, D) -> (KVH, Lmax, D)
            return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))

        layers = [
            (torch.stack([torch.cat([preamble.keys[i], padded(d[0][i])], dim=1) for d in docs]).to(device),
             torch.stack([torch.cat([preamble.values[i], padded(d[1][i])], dim=1) for d in docs]).to(device))
            for i in range(n_layers)
        ]  # each (N, KVH, |P|+Lmax, D)
        allowed = torch.zeros(n_paths, n_q, n_p + width + n_q, dtype=torch.bool, device=device)
        allowed[:, :, :n_p] = True
        for p, length in enumerate(doc_lens):
            allowed[p, :, n_p:n_p + length] = True
        allowed[:, :, n_p + width:] = causal_q
        input_ids = q_ids[None].expand(n_paths, n_q)  # (N, |q|)
        position_ids = torch.tensor(layout.query_positions, device=device)  # (N, |q|)
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=_mask(allowed, model.dtype),
                    cache=_cache(model, layers), use_cache=True)
        logits = out.logits  # (N, |q|, V)
        start = n_p + width
        query_kv = [
            ([layer.keys[p, :, start:] for layer in out.cache.layers],
             [layer.values[p, :, start:] for layer in out.cache.layers])
            for p in range(n_paths)
        ]
    else:
        raise ValueError(f"query_batching must be 'flat' or 'batch', got {batching!r}")

    if n_q > 1:
        logprob = _mean_logprob(logits[:, :-1], q_ids[1:][None].expand(n_paths, n_q - 1))  # (N,)
    else:
        logprob = torch.zeros(n_paths)
    return logprob.cpu(), query_kv


def keep_top_k(scores: Sequence[float], k: int | None) -> list[int]:
    """Indices of the k best paths (ties: the earlier path), in their original order."""
    if k is None or k >= len(scores):
        return list(range(len(scores)))
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return sorted(best)


# ============================================================================ 5. the answer


@dataclass
class PreparedAnswer:
    """Everything up to the first answer token: the cache over P + kept paths + A, and its logits."""

    cache: Any  # DynamicCache over [P, (d_i, q_i) kept, A], batch 1
    first_logits: torch.Tensor  # (V,) logits of the first answer token
    next_position: float  # position id of the first generated token
    scores: list[float]
    query_logprobs: list[float]
    doc_logprobs: list[float]
    kept: list[int]
    prompt_tokens: int
    cached_tokens: int
    timings: dict[str, float] = field(default_factory=dict)


def prepare_answer(
    lm: LoadedModel,
    prompt: ForkJoinPrompt,
    passages: Sequence[Passage],
    config: SuperpositionConfig,
    store: KVStore | None,
    deadline: float | None = None,
) -> PreparedAnswer:
    """P and documents (store or compute) -> query paths -> scores -> prune -> answer node.

    `deadline` (a `time.perf_counter()` value; None: none) is checked between documents' prefills:
    passed, `PrefillStopped` (each path is one retrieved passage: a chunk's worth of tokens)."""
    import torch

    if not prompt.docs:
        raise ValueError("superposition needs at least one passage")
    model, device = lm.model, lm.device
    timings = {"doc_compute_s": 0.0}
    t0 = time.perf_counter()

    # P, then each (P, d_i): from the store or computed now (and stored).
    pkey = preamble_key(lm, prompt.preamble)
    pre = fetch_kv(lm, store, pkey, prompt.preamble, None)
    timings["doc_compute_s"] += pre.compute_s
    cached_tokens = pre.entry.n_tokens if pre.hit else 0
    fetched = []
    n_read = pre.entry.n_tokens
    for i, (passage, ids, text) in enumerate(zip(passages, prompt.docs, prompt.doc_texts, strict=True)):
        if deadline is not None and i > 0 and time.perf_counter() > deadline:
            raise PrefillStopped(prefilled=n_read, total=n_read + sum(len(d) for d in prompt.docs[i:]))
        n_read += len(ids)
        got = fetch_kv(lm, store, document_key(pkey, passage, text), ids, pre.entry)
        timings["doc_compute_s"] += got.compute_s
        cached_tokens += got.entry.n_tokens if got.hit else 0
        fetched.append(got.entry)
    timings["kv_s"] = time.perf_counter() - t0

    # Positions; documents' keys moved from |P| + j to their layout positions.
    n_p = pre.entry.n_tokens
    layout = layout_positions(n_p, [len(d) for d in prompt.docs], len(prompt.query), config.positions)
    rotary = rotary_of(model)
    docs_kv = []
    for entry, positions in zip(fetched, layout.doc_positions, strict=True):
        delta = torch.tensor(positions, dtype=torch.float64) - torch.arange(n_p, n_p + entry.n_tokens)
        if config.positions == "integer" or not bool(delta.abs().max() > 0):
            docs_kv.append((entry.keys, entry.values))
        else:
            docs_kv.append(([rerotate_keys(rotary, k, delta) for k in entry.keys], entry.values))

    # All query copies in one forward; Bayesian saliency; top-k.
    t1 = time.perf_counter()
    q_logprob, query_kv = forward_queries(lm, pre.entry, docs_kv, prompt.query, layout, config.query_batching)
    doc_logprob = [float(e.meta.get("logprob", "0")) for e in fetched]
    scores = [float(q) + config.doc_weight * d for q, d in zip(q_logprob.tolist(), doc_logprob, strict=True)]
    kept = keep_top_k(scores, config.top_k)
    timings["query_s"] = time.perf_counter() - t1

    # The answer node over P + kept paths (pruned paths' KV is simply not included).
    t2 = time.perf_counter()
    n_a = len(prompt.answer)
    n_layers = len(pre.entry.keys)
    extra_tokens = 0  # tokens recomputed for the answer beyond A ("recompute" mode)
    best_last = sorted(kept, key=lambda i: (scores[i], -i))  # the order of the laid-out modes
    if config.answer_mode == "superposed":
        segments = [(docs_kv[p], query_kv[p]) for p in kept]
        answer_ids, start = list(prompt.answer), layout.answer_start(kept)
    elif config.answer_mode == "sequential":
        # Best-scored path last (nearest the question's answer); stored document keys sit at
        # |P| + j, query keys at the layout's query positions: move both to consecutive slots.
        segments, cursor = [], float(n_p)
        for p in best_last:
            n_d = fetched[p].n_tokens
            doc_delta = torch.full((n_d,), cursor - n_p, dtype=torch.float64)
            q_delta = torch.arange(len(prompt.query), dtype=torch.float64) + cursor + n_d - torch.tensor(
                layout.query_positions[p], dtype=torch.float64)
            segments.append((
                ([rerotate_keys(rotary, k, doc_delta) for k in fetched[p].keys], fetched[p].values),
                ([rerotate_keys(rotary, k, q_delta) for k in query_kv[p][0]], query_kv[p][1]),
            ))
            cursor += n_d + len(prompt.query)
        answer_ids, start = list(prompt.answer), cursor
    else:  # "recompute" (SuperpositionConfig refuses any other mode)
        segments = []
        answer_ids = [t for p in best_last for t in prompt.docs[p]] + list(prompt.query) + list(prompt.answer)
        start = float(n_p)
        extra_tokens = len(answer_ids) - n_a
    layers = []
    for i in range(n_layers):
        ks = [pre.entry.keys[i]] + [t for d, q in segments for t in (d[0][i], q[0][i])]
        vs = [pre.entry.values[i]] + [t for d, q in segments for t in (d[1][i], q[1][i])]
        layers.append((torch.cat(ks, dim=1)[None].to(device), torch.cat(vs, dim=1)[None].to(device)))
    past = layers[0][0].shape[2]
    n_in = len(answer_ids)
    allowed = torch.ones(n_in, past + n_in, dtype=torch.bool, device=device).tril(diagonal=past)[None]
    # Float position ids in every mode: RoPE computes position_ids.float() * inv_freq either way.
    position_ids = (torch.arange(n_in, dtype=torch.float64) + start).float().to(device)[None]  # (1, n_in)
    cache = _cache(model, layers)
    out = model(input_ids=torch.tensor([answer_ids], device=device), position_ids=position_ids,
                attention_mask=_mask(allowed, model.dtype), cache=cache, use_cache=True, logits_to_keep=1)
    timings["answer_s"] = time.perf_counter() - t2

    n_paths = len(prompt.docs)
    prompt_tokens = n_p + sum(len(d) for d in prompt.docs) + n_paths * len(prompt.query) + n_a + extra_tokens
    return PreparedAnswer(
        cache=out.cache,
        first_logits=out.logits[0, -1],
        next_position=start + n_in,
        scores=scores,
        query_logprobs=[float(x) for x in q_logprob.tolist()],
        doc_logprobs=doc_logprob,
        kept=kept,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        timings=timings,
    )


@dataclass
class SuperpositionResult(GenerationResult):
    """A GenerationResult (bill it like one) plus what superposition decided and where time went."""

    scores: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fresh_prompt_tokens(self) -> int:
        """Prompt tokens the model computed during this call (the rest came from the KV store)."""
        return self.prompt_tokens - self.cached_tokens


def answer_steps(lm: LoadedModel, prepared: PreparedAnswer) -> Step:
    """A step function continuing the prepared answer: each token at the next (float) position,
    attending to the whole cache (P, the kept paths, A, the tokens so far). Grows `prepared.cache`."""
    import torch

    model, device = lm.model, lm.device
    cache, position = prepared.cache, prepared.next_position

    def step(token: int) -> torch.Tensor:
        nonlocal cache, position
        kv_len = cache.get_seq_length()
        position_ids = torch.tensor([[position]], dtype=torch.float32, device=device)  # (1, 1)
        mask = torch.zeros(1, 1, 1, kv_len + 1, dtype=model.dtype, device=device)  # (1, 1, 1, K + 1): sees all
        out = model(input_ids=torch.tensor([[token]], device=device), position_ids=position_ids, attention_mask=mask,
                    cache=cache, use_cache=True, logits_to_keep=1)
        cache, position = out.cache, position + 1
        return out.logits[0, -1]

    return step


# ============================================================================ 6. the strategy


class SuperpositionPrompting:
    """Superposition prompting: each passage in its own cached path, low-saliency paths pruned (local models)."""

    name = "superposition"
    runs_model = True
    config_class = SuperpositionConfig

    def __init__(self, config: SuperpositionConfig | None = None) -> None:
        self.config = config or SuperpositionConfig()

    def build_messages(self, *, system_prompt: str, question: str, passages: list[Passage]) -> list[dict]:
        """The naive prompt: what a plain generate() gets (estimates, no passages, remote endpoints)."""
        return NaivePrompting().build_messages(system_prompt=system_prompt, question=question, passages=passages)

    def prompt_tokens_bound(
        self, *, model: LoadedModel, system_prompt: str, question: str, passages: Sequence[Passage]
    ) -> int:
        """The most prompt tokens `generate` can bill for this question: P, every path (d_i and its
        query), A, and in "recompute" mode every document and the query again (the kept ones are recomputed)."""
        prompt = build_forkjoin(model.tokenizer, system_prompt=system_prompt, question=question, passages=passages,
                                instruction=self.config.instruction)
        docs = sum(len(d) for d in prompt.docs)
        again = docs + len(prompt.query) if self.config.answer_mode == "recompute" else 0
        return len(prompt.preamble) + docs + again + len(prompt.docs) * len(prompt.query) + len(prompt.answer)

    def precompute(
        self, *, model: LoadedModel, store: KVStore, system_prompt: str, passages: Sequence[Passage]
    ) -> dict[str, float]:
        """Fill the store with the KV of P and of every passage (e.g. at ingestion). -> counts and seconds."""
        import torch

        prompt = build_forkjoin(model.tokenizer, system_prompt=system_prompt, question="", passages=passages,
                                instruction=self.config.instruction)
        clock = device_clock(model.device)
        started = clock()
        computed = 0
        with model.lock, torch.inference_mode():
            pkey = preamble_key(model, prompt.preamble)
            pre = fetch_kv(model, store, pkey, prompt.preamble, None)
            computed += not pre.hit
            for passage, ids, text in zip(passages, prompt.docs, prompt.doc_texts, strict=True):
                computed += not fetch_kv(model, store, document_key(pkey, passage, text), ids, pre.entry).hit
        return {"computed": computed, "total": len(passages) + 1, "seconds": clock() - started}

    def prepare(
        self, *, model: LoadedModel, system_prompt: str, question: str, passages: Sequence[Passage],
        kv_store: KVStore | None = None,
    ) -> PreparedAnswer:
        """Everything up to the first answer token's logits (no decoding). Holds the model lock."""
        import torch

        prompt = build_forkjoin(model.tokenizer, system_prompt=system_prompt, question=question, passages=passages,
                                instruction=self.config.instruction)
        with model.lock, torch.inference_mode():
            return prepare_answer(model, prompt, passages, self.config, kv_store)

    def generate(
        self,
        *,
        model: LoadedModel,
        system_prompt: str,
        question: str,
        passages: Sequence[Passage],
        max_output_tokens: int,
        wall_time_limit_s: float,
        on_token: Callable[[str], None] | None = None,
        kv_store: KVStore | None = None,
        budget_s: float | Allowance | None = None,
        decoding: DecodingSettings | None = None,
    ) -> SuperpositionResult:
        """Answer under the meter's caps, streaming text pieces to `on_token`; `decoding` (the pipeline's
        settings: the degeneration guard, penalties, stop strings, sampling; None: the defaults, greedy)
        applies as in the meter's generations.

        Like meter.generate: the wall-time limit is checked after every generated token (so at
        least one token is produced), and a failing `on_token` stops generation with
        finish_reason "error" while the usage is still reported. `budget_s` (the device-seconds
        the caller's hold still pays for; None: unbounded) bounds the compute as it bounds the
        meter's: 0 runs nothing, decoding stops with "budget" before a step that would pass it,
        and the seconds reported are clamped to it (docs/costs.md, "The hold is enforced").
        """
        import torch

        if max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
        if not wall_time_limit_s > 0:
            raise ValueError(f"wall_time_limit_s must be > 0, got {wall_time_limit_s}")
        budget = as_allowance(budget_s)  # ValueError when negative
        called = time.perf_counter()
        tokenizer = model.tokenizer
        if budget is not None and not budget.covers(1e-9):
            # The hold cannot pay for any compute: run nothing, bill nothing.
            return SuperpositionResult(
                text="", finish_reason="budget", prompt_tokens=0, completion_tokens=0, cached_tokens=0,
                wall_s=time.perf_counter() - called, gpu_s=0.0, compute_s=0.0, model=model.name,
                error="the hold covers no device time", ttft_s=math.nan,
            )
        prompt = build_forkjoin(tokenizer, system_prompt=system_prompt, question=question, passages=passages,
                                instruction=self.config.instruction)
        on_cuda = model.device.startswith("cuda")

        clock = device_clock(model.device)
        with model.lock:
            # Compute starts once we hold the model: the wall-time deadline, the billed device-seconds.
            t0, c0 = time.perf_counter(), clock()
            if on_cuda:
                torch.cuda.synchronize(model.device)
            with torch.inference_mode():
                try:
                    prepared = prepare_answer(model, prompt, passages, self.config, kv_store,
                                              deadline=t0 + wall_time_limit_s)
                except PrefillStopped as stopped:
                    # Out of time between two documents: no answer, the compute so far billed.
                    compute_s = clock() - c0
                    if budget is not None:
                        compute_s = min(compute_s, budget.seconds)
                    return SuperpositionResult(
                        text="", finish_reason="time_limit", prompt_tokens=stopped.prefilled, completion_tokens=0,
                        cached_tokens=0, wall_s=time.perf_counter() - called, gpu_s=compute_s if on_cuda else 0.0,
                        compute_s=compute_s, model=model.name, ttft_s=math.nan,
                        error=f"superposition's {stopped} (wall-time limit {wall_time_limit_s:g} s)",
                    )
                t1 = time.perf_counter()
                decoded = decode(first_logits=prepared.first_logits, step=answer_steps(model, prepared),
                                 tokenizer=tokenizer, eos=eos_ids(model), max_new_tokens=max_output_tokens,
                                 deadline=t0 + wall_time_limit_s, on_token=on_token, budget_s=budget,
                                 compute_started=c0, clock=clock, decoding=decoding,
                                 pick=decoding_pick(model, decoding))
            if on_cuda:
                torch.cuda.synchronize(model.device)
            compute_s = clock() - c0
        prepared.timings["decode_s"] = time.perf_counter() - t1
        if budget is not None:
            # As the meter: what the last step overran its prediction by is not billed.
            compute_s = min(compute_s, budget.seconds)

        return SuperpositionResult(
            text=decoded.text,
            finish_reason=decoded.finish_reason,
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=len(decoded.token_ids),
            cached_tokens=prepared.cached_tokens,
            wall_s=time.perf_counter() - called,
            gpu_s=compute_s if on_cuda else 0.0,
            compute_s=compute_s,
            model=model.name,
            error=decoded.error,
            repetition_tokens_saved=decoded.repetition_tokens_saved,
            scores=prepared.scores,
            kept=prepared.kept,
            ttft_s=decoded.first_token_at - called,
            timings=prepared.timings,
        )


__all__ = [
    "ForkJoinPrompt",
    "Layout",
    "PreparedAnswer",
    "SuperpositionConfig",
    "SuperpositionPrompting",
    "SuperpositionResult",
    "answer_steps",
    "build_forkjoin",
    "compute_kv",
    "forward_queries",
    "keep_top_k",
    "layout_positions",
    "prepare_answer",
    "rerotate_keys",
]
