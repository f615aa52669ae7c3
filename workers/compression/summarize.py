"""Summarization compression (TCRA-LLM's first family): extractive and abstractive.

`extractive`: keep the sentences most relevant to the query (MiniLM cosine), choosing them in
maximal-marginal-relevance order so near-duplicates do not eat the budget, until the token
budget is spent; kept sentences stay in their original order.

`summarize`: a local instruct model (SmolLM2-135M by default; any meter target) writes a
query-focused summary of each chunk, with a per-chunk token budget proportional to the
chunk's share of the context. A summary that comes back empty or longer than its budget is
replaced by the extractive selection for that chunk, so the result is never longer than the
original and never over budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext
from workers.compression.cache import cache_key
from workers.compression.resources import Resources
from workers.compression.text import (
    Span,
    allocate,
    allocate_weighted,
    render,
    sentence_spans,
    token_budget,
    word_spans,
)
from workers.prompting.base import Passage


def identity(passages: list[Passage], tokens: int) -> CompressedContext:
    return CompressedContext(
        passages=list(passages),
        tokens_before=tokens,
        tokens_after=tokens,
        kept_spans={p.chunk_id: [(0, len(p.text))] for p in passages},
    )


def fit_words(text: str, span: Span, budget: int, count_tokens: Callable[[str], int]) -> Span | None:
    """The longest word-prefix of `span` whose text has at most `budget` tokens (binary search)."""
    words = word_spans(text, span)
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[span[0] : words[mid - 1][1]]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return (span[0], words[lo - 1][1]) if lo else None


@dataclass
class _Sentence:
    passage: int  # index into passages
    span: Span
    tokens: int


class Extractive:
    """Query-relevant sentences by MiniLM similarity, MMR redundancy removal, original order.

    Sentence relevance = cos(query, sentence) + `passage_weight` * cos(query, passage), the
    passage vector being the normalised mean of its sentence vectors: a sentence in an on-topic
    paragraph ranks above an equally similar one in an off-topic paragraph, which helps the
    multi-hop case where the bridge sentence itself does not look like the question. Sentence
    vectors are query-independent and cached per chunk when a cache is given.

    Redundancy (MMR): candidates are taken in order of λ·relevance − (1−λ)·penalty, where the
    penalty is how far the candidate's highest cosine to an already chosen sentence exceeds
    `redundancy_threshold`, scaled to [0, 1] (threshold 0 is classic MMR). Only near-duplicates
    are penalised: the two supporting sentences of a multi-hop question are often similar to
    each other, and classic MMR drops one of them (measured: docs/benchmarks-compression.md).
    """

    name = "extractive"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        mmr_lambda: float = 0.5,
        passage_weight: float = 0.5,
        title_context: bool = True,
        redundancy_threshold: float = 0.8,
    ) -> None:
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        self.resources = resources or Resources()
        self.mmr_lambda = mmr_lambda
        self.passage_weight = passage_weight
        self.title_context = title_context
        self.redundancy_threshold = redundancy_threshold

    def params(self) -> dict[str, Any]:
        return {"mmr_lambda": self.mmr_lambda, "passage_weight": self.passage_weight,
                "title_context": self.title_context, "redundancy_threshold": self.redundancy_threshold}

    # ------------------------------------------------------------------ embeddings

    def _sentence_vectors(self, passages: list[Passage], spans: list[list[Span]]) -> np.ndarray:
        """(S, D) normalised vectors of every sentence of every passage, in passage order."""
        embedder = self.resources.get_embedder()
        cache = self.resources.cache
        model = str(getattr(embedder, "model_path", type(embedder).__name__))
        parts: list[np.ndarray | None] = []
        todo: list[str] = []
        keys = [
            cache_key("extractive/sentences", {"model": model, "title": self.title_context}, p.text, None,
                      title=p.title if self.title_context else "")
            for p in passages
        ]
        for key, passage, passage_spans in zip(keys, passages, spans, strict=True):
            hit = cache.get_array(key) if cache is not None else None
            if hit is not None and hit.shape[0] == len(passage_spans):
                parts.append(hit)
                continue
            parts.append(None)
            todo.extend(self._sentence_input(passage, span) for span in passage_spans)
        fresh = embedder.encode(todo) if todo else None  # (len(todo), D)
        out, offset = [], 0
        for key, passage_spans, part in zip(keys, spans, parts, strict=True):
            if part is None:
                assert fresh is not None
                part = fresh[offset : offset + len(passage_spans)]
                offset += len(passage_spans)
                if cache is not None:
                    cache.put_array(key, part.astype(np.float32))
            out.append(part)
        dim = int(getattr(embedder, "dimension", 384))
        return np.concatenate(out, axis=0) if out else np.zeros((0, dim), dtype=np.float32)

    def _sentence_input(self, passage: Passage, span: Span) -> str:
        sentence = passage.text[span[0] : span[1]]
        # The title names the entity the sentence is about ("He was born in ..."): without it
        # pronoun-led sentences look unrelated to a question that names the entity.
        return f"{passage.title}. {sentence}" if self.title_context and passage.title else sentence

    # ------------------------------------------------------------------ selection

    def relevance(self, query: str, passages: list[Passage], spans: list[list[Span]]) -> tuple[np.ndarray, np.ndarray]:
        """(relevance (S,), sentence vectors (S, D)) for every sentence in passage order."""
        vectors = self._sentence_vectors(passages, spans)  # (S, D)
        q = self.resources.get_embedder().encode([query])[0]  # (D,)
        rel = vectors @ q  # (S,)
        if self.passage_weight and len(rel):
            owner = np.repeat(np.arange(len(passages)), [len(s) for s in spans])  # (S,)
            for i in range(len(passages)):
                rows = owner == i
                if rows.any():
                    mean = vectors[rows].mean(axis=0)
                    mean /= np.linalg.norm(mean) or 1.0
                    rel[rows] += self.passage_weight * float(mean @ q)
        return rel, vectors

    def select(
        self, rel: np.ndarray, vectors: np.ndarray, sizes: list[int], budget: int
    ) -> list[int]:
        """Sentence indices chosen in MMR order until no remaining sentence fits the budget."""
        chosen: list[int] = []
        left = budget
        candidates = set(range(len(sizes)))
        redundancy = np.full(len(sizes), -1.0)  # max cos to any chosen sentence, (S,)
        thr = min(self.redundancy_threshold, 0.99)
        penalty = np.zeros(len(sizes))  # (S,)
        while candidates and left > 0:
            best = max(candidates, key=lambda i: self.mmr_lambda * rel[i] - (1 - self.mmr_lambda) * penalty[i])
            candidates.discard(best)
            if sizes[best] > left:
                continue  # too long for what is left; a shorter one further down may fit
            chosen.append(best)
            left -= sizes[best]
            redundancy = np.maximum(redundancy, vectors @ vectors[best])
            penalty = np.clip(redundancy - thr, 0.0, None) / (1.0 - thr)
        return chosen

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        spans = [sentence_spans(p.text) for p in passages]
        sentences = [
            _Sentence(i, span, count_tokens(p.text[span[0] : span[1]]))
            for i, (p, passage_spans) in enumerate(zip(passages, spans, strict=True))
            for span in passage_spans
        ]
        rel, vectors = self.relevance(query, passages, spans)
        order = self.select(rel, vectors, [s.tokens for s in sentences], budget)
        keep: dict[int, list[Span]] = {i: [] for i in range(len(passages))}
        for index in order:
            keep[sentences[index].passage].append(sentences[index].span)
        if not order and sentences and budget > 0:
            # Every sentence is longer than the budget: keep the best one's first words.
            best = sentences[int(np.argmax(rel))]
            cut = fit_words(passages[best.passage].text, best.span, budget, count_tokens)
            if cut is not None:
                keep[best.passage].append(cut)
        result = build(passages, keep, count_tokens, before)
        # Rendering joins sentences with single spaces, which can tokenize a little differently
        # from counting them one by one: drop the least relevant choices until it fits.
        while result.tokens_after > budget and order:
            dropped = sentences[order.pop()]
            keep[dropped.passage].remove(dropped.span)
            result = build(passages, keep, count_tokens, before)
        result.compute_s = time.perf_counter() - started
        return result


def build(
    passages: list[Passage], keep: dict[int, list[Span]], count_tokens: Callable[[str], int], before: int
) -> CompressedContext:
    """A CompressedContext from kept spans per passage index; passages that keep nothing are dropped."""
    out: list[Passage] = []
    kept_spans: dict[int, list[Span]] = {}
    after = 0
    for i, passage in enumerate(passages):
        spans = sorted(keep.get(i, []))
        kept_spans[passage.chunk_id] = spans
        if not spans:
            continue
        text = render(passage.text, spans)
        after += count_tokens(text)
        out.append(Passage(chunk_id=passage.chunk_id, title=passage.title, text=text))
    return CompressedContext(passages=out, tokens_before=before, tokens_after=after, kept_spans=kept_spans)


# ---------------------------------------------------------------------------- abstractive


def model_label(target: Any) -> str:
    """The name the meter reports for a target (GenerationResult.model)."""
    target = getattr(target, "config", target)  # an OpenAICompatClient reports its config's name
    label = getattr(target, "display_name", None) or getattr(target, "name", None)
    return str(label) if label else type(target).__name__

SUMMARY_SYSTEM = "You write short, factual summaries. Keep names, dates and numbers exactly as written."
SUMMARY_QUERY = (
    "Question: {query}\n\nPassage ({title}):\n{text}\n\n"
    "Summarize the passage in at most {words} words. Keep only the facts that help answer the question."
)
SUMMARY_GENERIC = "Passage ({title}):\n{text}\n\nSummarize the passage in at most {words} words. Keep the key facts."
# Below this many tokens a summary cannot say anything; the extractive choice does better.
MIN_SUMMARY_TOKENS = 8
_PREAMBLE = re.compile(r"^(here is|here's|sure|summary)\b[^:\n]*:\s*", re.IGNORECASE)


class Summarize:
    """Query-focused abstractive summaries per chunk by a local (or any meter) instruct model.

    Costs one model call per chunk that must shrink: prompt ≈ chunk + question + 60 tokens,
    completion ≤ the chunk's token budget. `query_aware=False` writes generic summaries, which
    are then cacheable per (model, chunk, budget). kept_spans is empty for a summarized chunk
    (no original characters survive verbatim) and exact for kept or extractive-fallback chunks.
    """

    name = "summarize"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        relevance_order: bool = True,
        allocation: str = "relevance",
        temperature: float = 0.1,
    ) -> None:
        if allocation not in ("size", "relevance"):
            raise ValueError(f"allocation must be 'size' or 'relevance', got {allocation!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.relevance_order = relevance_order
        self.allocation = allocation
        self.temperature = temperature
        self.extractive = Extractive(resources=self.resources)

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "relevance_order": self.relevance_order,
                "allocation": self.allocation, "temperature": self.temperature}

    def _plan(self, query: str, passages: list[Passage], counts: list[int], budget: int) -> tuple[list[int], list[str]]:
        """(token share per chunk, text to show the summarizer per chunk).

        allocation="size": shares ∝ chunk size (TCRA-LLM's setting). "relevance": ∝ size ×
        exp((relevance - best) / temperature), so the chunks that matter to the question get most
        of the budget and off-topic ones little or none (and no model call).
        relevance_order: the chunk's sentences most query-relevant first, because a small model's
        "summary" mostly restates the start of its input.
        """
        texts = [p.text for p in passages]
        if not (self.query_aware and (self.relevance_order or self.allocation == "relevance")):
            return allocate(budget, counts), texts
        spans = [sentence_spans(p.text) for p in passages]
        rel, _ = self.extractive.relevance(query, passages, spans)  # (S,) in passage order
        bounds = np.cumsum([0] + [len(s) for s in spans])
        per_passage = [rel[bounds[i] : bounds[i + 1]] for i in range(len(passages))]
        if self.relevance_order:
            texts = [
                " ".join(p.text[a:b] for a, b in (s[k] for k in np.argsort(-r, kind="stable"))) if len(s) > 1 else p.text
                for p, s, r in zip(passages, spans, per_passage, strict=True)
            ]
        if self.allocation == "size":
            return allocate(budget, counts), texts
        best = np.array([float(r.max()) if len(r) else -1.0 for r in per_passage])  # (P,)
        weights = np.exp((best - best.max()) / self.temperature)
        return allocate_weighted(budget, counts, weights.tolist()), texts

    def _summarize(self, query: str, passage: Passage, budget: int, shown: str) -> tuple[str, int, int, float]:
        """(summary, prompt tokens, completion tokens, compute seconds) for one chunk; a cache hit costs 0."""
        from workers.runtime.meter import generate

        target = self.resources.get_generator()
        cache = self.resources.cache
        key = None
        if cache is not None and not self.query_aware:
            key = cache_key(self.name, {"model": str(getattr(target, "name", target))}, passage.text, budget,
                            title=passage.title)
            hit = cache.get_json(key)
            if hit is not None:
                return hit["text"], 0, 0, 0.0
        # ≈ 0.75 words per token for English BPE vocabularies.
        words = max(3, int(budget * 0.7))
        template = SUMMARY_QUERY if self.query_aware else SUMMARY_GENERIC
        messages = [
            {"role": "system", "content": SUMMARY_SYSTEM},
            {"role": "user", "content": template.format(query=query, title=passage.title, text=shown, words=words)},
        ]
        result = generate(
            target=target,
            messages=messages,
            max_output_tokens=budget,
            wall_time_limit_s=self.resources.generation_time_limit_s,
        )
        text = _PREAMBLE.sub("", result.text.strip()).strip()
        if key is not None and cache is not None and text:
            cache.put_json(key, {"text": text})
        return text, result.prompt_tokens, result.completion_tokens, result.compute_s

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        shares, shown = self._plan(query, passages, counts, budget)
        out: list[Passage] = []
        kept_spans: dict[int, list[Span]] = {}
        after = prompt_tokens = completion_tokens = 0
        model_s = 0.0
        for passage, count, share, text_shown in zip(passages, counts, shares, shown, strict=True):
            if share >= count:
                text, spans = passage.text, [(0, len(passage.text))]
            elif share <= 0:
                text, spans = "", []
            else:
                summary = ""
                if share >= MIN_SUMMARY_TOKENS:
                    summary, p_tokens, c_tokens, seconds = self._summarize(query, passage, share, text_shown)
                    prompt_tokens, completion_tokens, model_s = (
                        prompt_tokens + p_tokens, completion_tokens + c_tokens, model_s + seconds)
                if summary and count_tokens(summary) <= share:
                    text, spans = summary, []
                else:
                    # Empty, too long (tokenizers differ between the summarizer and the
                    # pipeline), or too small a budget to summarize: keep the best sentences.
                    # A target > 1 is a token budget; a budget of 1 token must be given as a share.
                    one = float(share) if share > 1 else 1.0 / count
                    fallback = self.extractive.compress(
                        query=query, passages=[passage], target=one, count_tokens=count_tokens
                    )
                    text = fallback.passages[0].text if fallback.passages else ""
                    spans = fallback.kept_spans.get(passage.chunk_id, [])
            kept_spans[passage.chunk_id] = spans
            if text:
                after += count_tokens(text)
                out.append(Passage(chunk_id=passage.chunk_id, title=passage.title, text=text))
        return CompressedContext(
            passages=out,
            tokens_before=before,
            tokens_after=after,
            kept_spans=kept_spans,
            # Wall time of the whole method; the model share of it is inside (model_s).
            compute_s=max(time.perf_counter() - started, model_s),
            model_prompt_tokens=prompt_tokens,
            model_completion_tokens=completion_tokens,
            model=model_label(self.resources.generator) if prompt_tokens else "",
        )
