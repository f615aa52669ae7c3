"""What a `compress` call is about to do, bounded before it runs, and the state it runs with.

A query's hold grows by the bound of the step about to run (docs/costs.md), so the compress
stage needs its bound before it starts. Every method's `plan(query=, passages=, target=,
count_tokens=)` returns a `CompressionPlan`: the model calls it will make (a prompt-token bound
and the exact `max_output_tokens` it passes to the meter, per call), the texts and tokens it will
embed, and the tokens a local scorer will read. A plan runs no model: tokenizers and cache
lookups only. Counts are exact where the work does not depend on a model's output (the sentences
`extractive` embeds, a cached summary), and a proven upper bound where it does (which sentences
the coarse stage keeps, how long a summary turns out).

`compress(..., plan=plan)` then runs with the plan's `Work`: the cache entries the plan found are
pinned in it, so an entry evicted between the two cannot make the run do more than planned, and
the run tallies what it actually did, reported on `CompressedContext` (`model_calls`,
`embed_calls`, `embed_texts`, `embed_tokens`, `scorer_passes`, `scorer_tokens`).
`CompressionPlan.violations(result)` lists anything the run did past its plan (none, by
construction; the tests check it on the real models). Why: docs/compression.md, "The plan".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from workers.compression.base import CompressedContext
from workers.compression.cache import CompressionCache, text_hash
from workers.prompting.base import Passage

logger = logging.getLogger(__name__)


def embed_token_counts(embedder: Any, texts: Sequence[str]) -> list[int]:
    """Tokens the embedder reads per text: its tokenizer's ids with the special tokens ([CLS], [SEP]),
    truncated at its `max_seq_length` and stripped as sentence-transformers does (padding not counted).

    An embedder without a tokenizer (a test double) counts whitespace words + 2.
    """
    if not texts:
        return []
    tokenizer = getattr(embedder, "tokenizer", None)
    if tokenizer is None:
        return [len(str(t).split()) + 2 for t in texts]
    limit = getattr(embedder, "max_seq_length", None)
    encoded = tokenizer(
        [str(t).strip() for t in texts], add_special_tokens=True, truncation=limit is not None, max_length=limit
    )
    return [len(ids) for ids in encoded["input_ids"]]


def knapsack_bound(items: Sequence[tuple[float, float]], capacity: float) -> int:
    """An upper bound on the total value of items (weight, value) whose weights add up to at most `capacity`.

    The fractional (LP) relaxation, so at least the best 0/1 choice: items by value per weight,
    the last one cut. An item heavier than the capacity never fits whole and is left out; a
    weightless one always fits.
    """
    total = sum(v for w, v in items if w <= 0 and v > 0)
    room = float(capacity)
    fitting = [(w, v) for w, v in items if 0 < w <= capacity and v > 0]
    for w, v in sorted(fitting, key=lambda item: -item[1] / item[0]):
        if room <= 0:
            break
        take = min(1.0, room / w)
        total += v * take
        room -= w * take
    return int(math.ceil(total - 1e-9))


def fingerprint(method: str, params: dict[str, Any], query: str, passages: Sequence[Passage], target: float) -> str:
    """What a plan was made for: a compress call with other inputs must not run with it."""
    payload = {
        "method": method,
        "params": params,
        "query": query,
        "target": float(target),
        "passages": [[p.chunk_id, p.title, text_hash(p.text)] for p in passages],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Work:
    """One compress call's view of the cache, and the tally of the work it ran.

    Reads go to this call's memory first (what its plan found and pinned, what the call itself
    computed), then to the shared on-disk cache (a hit there the plan did not see is only less
    work); writes go to both. `encode` embeds and tallies. Not shared between calls.
    """

    def __init__(self, cache: CompressionCache | None) -> None:
        self.cache = cache
        self.memory: dict[Any, Any] = {}
        self.reset()

    def reset(self) -> None:
        self.model_calls = 0
        self.embed_calls = 0
        self.embed_texts = 0
        self.embed_tokens = 0
        self.scorer_passes = 0
        self.scorer_tokens = 0

    # ------------------------------------------------------------------ lookups

    def get_array(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The array under `key` (and of `shape`, when given), pinned for the rest of the call."""
        hit = self.memory.get(key)
        if hit is None and self.cache is not None:
            hit = self.cache.get_array(key)
        if hit is None or (shape is not None and hit.shape[: len(shape)] != shape):
            return None
        self.memory[key] = hit
        return hit

    def put_array(self, key: str, value: np.ndarray) -> None:
        self.memory[key] = value
        if self.cache is not None:
            self.cache.put_array(key, value)

    def get_json(self, key: str) -> Any | None:
        hit = self.memory.get(key)
        if hit is None and self.cache is not None:
            hit = self.cache.get_json(key)
        if hit is not None:
            self.memory[key] = hit
        return hit

    def put_json(self, key: str, value: Any) -> None:
        self.memory[key] = value
        if self.cache is not None:
            self.cache.put_json(key, value)

    # ------------------------------------------------------------------ work

    def encode(self, embedder: Any, texts: list[str]) -> np.ndarray:
        """embedder.encode(texts), tallied (one call, its texts, their tokens)."""
        self.embed_calls += 1
        self.embed_texts += len(texts)
        self.embed_tokens += sum(embed_token_counts(embedder, texts))
        return embedder.encode(texts)

    def report(self, result: CompressedContext) -> CompressedContext:
        """`result` with this call's tally on it."""
        result.model_calls = self.model_calls
        result.embed_calls = self.embed_calls
        result.embed_texts = self.embed_texts
        result.embed_tokens = self.embed_tokens
        result.scorer_passes = self.scorer_passes
        result.scorer_tokens = self.scorer_tokens
        return result


@dataclass(frozen=True)
class ModelCall:
    """One call to the meter's `generate`: a bound on the prompt tokens it will report, and its cap."""

    prompt_tokens: int
    max_output_tokens: int  # exactly what the method passes to the meter (or more, never less)


@dataclass
class CompressionPlan:
    """The most a `compress` call will do, counted before it runs (see the module docstring).

    model: the meter's name of the model making `model_calls` ("" when none); it is the
    pipeline's endpoint model when the pipeline handed its target in (`pipeline_method`).
    completion_cap: the total completion tokens over all calls, enforced by the method (each
    call's cap is cut to what is left of it); None when the calls' own caps are the bound.
    scorer / scorer_passes / scorer_tokens: the local causal LM that scores tokens
    (`surprisal_prune`), its forward passes and the tokens they read (prefill only, no decoding);
    surprisal reports the same tokens as model_prompt_tokens under `model` = the scorer's name.
    embed_calls / embed_texts / embed_tokens: `encode` calls to the sentence embedder (MiniLM),
    their texts, and the tokens those texts hold by `embed_token_counts`.
    exact: True when every count is what the run will do (nothing depends on a model's output).
    on_model_call: see the field (a hold that grows call by call, or a decode-time allowance).
    """

    method: str
    tokens_before: int = 0
    budget: int = 0
    model: str = ""
    model_calls: list[ModelCall] = field(default_factory=list)
    completion_cap: int | None = None
    scorer: str = ""
    scorer_passes: int = 0
    scorer_tokens: int = 0
    embed_calls: int = 0
    embed_texts: int = 0
    embed_tokens: int = 0
    exact: bool = True
    # Set by the caller before `compress(plan=...)`: called before each model call with that call
    # counted exactly (its prompt's tokens now that its text is known, its cap); it may raise to
    # stop the run, and returns more keyword arguments for the meter's `generate` (or None).
    on_model_call: Callable[[ModelCall], dict[str, Any] | None] | None = field(
        default=None, repr=False, compare=False
    )
    work: Work | None = field(default=None, repr=False, compare=False)
    fingerprint: str = field(default="", repr=False, compare=False)

    @property
    def prompt_tokens(self) -> int:
        """The bound on the prompt tokens of all model calls together."""
        return sum(call.prompt_tokens for call in self.model_calls)

    @property
    def completion_tokens(self) -> int:
        """The bound on the completion tokens of all model calls together."""
        total = sum(call.max_output_tokens for call in self.model_calls)
        return total if self.completion_cap is None else min(total, self.completion_cap)

    def add_encode(self, embedder: Any, texts: Sequence[str]) -> None:
        """Count one `encode` call of `texts` (nothing when there are none)."""
        if texts:
            self.embed_calls += 1
            self.embed_texts += len(texts)
            self.embed_tokens += sum(embed_token_counts(embedder, texts))

    def violations(self, result: CompressedContext) -> list[str]:
        """What `result` (the run of this plan) did past it: empty when the plan held."""
        scorer = result.scorer_tokens
        reported = {
            "model_calls": (result.model_calls, len(self.model_calls)),
            "model_prompt_tokens": (result.model_prompt_tokens - scorer, self.prompt_tokens),
            "model_completion_tokens": (result.model_completion_tokens, self.completion_tokens),
            "scorer_passes": (result.scorer_passes, self.scorer_passes),
            "scorer_tokens": (scorer, self.scorer_tokens),
            "embed_calls": (result.embed_calls, self.embed_calls),
            "embed_texts": (result.embed_texts, self.embed_texts),
            "embed_tokens": (result.embed_tokens, self.embed_tokens),
        }
        out = [f"{name}: ran {ran}, planned {planned}" for name, (ran, planned) in reported.items() if ran > planned]
        if result.model_prompt_tokens and result.model not in (self.model, self.scorer):
            out.append(f"model: ran {result.model!r}, planned {self.model or self.scorer!r}")
        return out


def start(
    method: Any,
    plan: CompressionPlan | None,
    *,
    query: str,
    passages: Sequence[Passage],
    target: float,
) -> Work:
    """The Work a compress call runs with: its plan's (checked to be for this very call), else a fresh one."""
    if plan is None:
        return Work(getattr(getattr(method, "resources", None), "cache", None))
    params = method.params() if hasattr(method, "params") else {}
    if plan.method != method.name or plan.fingerprint != fingerprint(method.name, params, query, passages, target):
        raise ValueError(f"this {plan.method} plan was made for another compress call")
    assert plan.work is not None
    plan.work.reset()
    return plan.work


def check(plan: CompressionPlan | None, result: CompressedContext) -> CompressedContext:
    """Log a run that did more than its plan (a bug: plans are upper bounds by construction)."""
    if plan is not None:
        over = plan.violations(result)
        if over:
            logger.warning("compression %s ran past its plan: %s", plan.method, "; ".join(over))
    return result


def new_plan(
    method: Any, *, query: str, passages: Sequence[Passage], target: float, tokens_before: int, budget: int
) -> CompressionPlan:
    """An empty plan (no work yet) for `method` on these inputs, with a fresh Work."""
    params = method.params() if hasattr(method, "params") else {}
    return CompressionPlan(
        method=method.name,
        tokens_before=tokens_before,
        budget=budget,
        work=Work(getattr(getattr(method, "resources", None), "cache", None)),
        fingerprint=fingerprint(method.name, params, query, passages, target),
    )


class CompressionMethod(Protocol):
    """What every registered method does: plan a call (no model runs), then run it (with that plan)."""

    name: str

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan: ...

    def compress(
        self,
        *,
        query: str,
        passages: list[Passage],
        target: float,
        count_tokens: Callable[[str], int],
        plan: CompressionPlan | None = None,
    ) -> CompressedContext: ...
