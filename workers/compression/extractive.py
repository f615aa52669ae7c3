"""`extractive`: keep the sentences most relevant to the question, in their original order.

Relevance is MiniLM cosine plus a few cheap signals (retrieval rank, question-word overlap,
expected answer type, lead sentence, title hops); sentences are chosen in maximal-marginal-
relevance order until the token budget is spent. It never changes a word, which makes it the
cheapest method and the fallback of `summarize`. Why each signal: docs/compression.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext, build, identity, size_up
from workers.compression.cache import cache_key
from workers.compression.plan import CompressionPlan, Work, check, new_plan, start
from workers.compression.resources import Resources
from workers.compression.text import (
    Span,
    sentence_spans,
    token_budget,
    without_disambiguation,
    word_spans,
)
from workers.prompting.base import Passage
from workers.runtime.text import (  # shared with the extractive answer; re-exported here
    answer_type_match,
    expected_answer_type,
    lexical_overlap,
    rank_prior,
)

__all__ = ["Extractive", "answer_type_match", "expected_answer_type", "fit_words", "lexical_overlap", "rank_prior",
           "title_links"]


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


# Weight of the retrieval-rank prior in sentence relevance (see rank_prior); 0 ignores the order.
# Chosen on a tuning split disjoint from the benchmark's questions (docs/benchmarks-compression.md).
RANK_WEIGHT = 0.2


# Weight of the IDF-weighted query-term overlap (see lexical_overlap); 0 is embeddings only.
LEXICAL_WEIGHT = 0.2


# Weight of the expected-answer-type match (see answer_type_match); 0 turns it off.
ANSWER_TYPE_WEIGHT = 0.2
# Bonus of a passage's first sentence, which names what the passage is about ("X (born ...) is
# an American basketball coach"): the answer to "who ..." is often only there.
LEAD_WEIGHT = 0.1

# Relevance added to every sentence of a passage once a chosen sentence names its title (see
# `title_links`): the second hop of a multi-hop question. Set a priori like the other signals.
HOP_WEIGHT = 0.2


def title_links(
    query: str, passages: list[Passage], sentences: list[str], owner: Sequence[int] | np.ndarray
) -> list[set[int]]:
    """For each sentence, the other passages whose title it spells out (and the question does not).

    Multi-hop questions name the first entity; its passage names the second ("... principal
    captain of King *Richard I of England*"), whose passage holds the answer ("... his mother,
    Eleanor of Aquitaine") but looks nothing like the question. Titles are compared with their
    capitals and without a bracketed disambiguation ("Coal Miner's Daughter (film)").
    """
    asked = query.lower()
    patterns: list[re.Pattern[str] | None] = []
    for passage in passages:
        title = without_disambiguation(passage.title or "")
        named = len(title) < 3 or title.lower() in asked
        patterns.append(None if named else re.compile(rf"(?<!\w){re.escape(title)}(?!\w)"))
    return [
        {j for j, pattern in enumerate(patterns) if j != owner[i] and pattern is not None and pattern.search(sentence)}
        for i, sentence in enumerate(sentences)
    ]


class Extractive:
    """Query-relevant sentences by MiniLM similarity, MMR redundancy removal, original order.

    Sentence relevance = cos(query, sentence) + `passage_weight` * cos(query, passage) +
    `rank_weight` * rank_prior, the passage vector being the normalised mean of its sentence
    vectors: a sentence in an on-topic paragraph ranks above an equally similar one in an
    off-topic paragraph, which helps the multi-hop case where the bridge sentence itself does not
    look like the question; and the retriever's order (passages arrive best first) breaks the
    near-ties of cosine in favour of the passages it ranked higher. Sentence vectors are
    query-independent and cached per chunk when a cache is given.

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
        rank_weight: float = RANK_WEIGHT,
        lexical_weight: float = LEXICAL_WEIGHT,
        answer_type_weight: float = ANSWER_TYPE_WEIGHT,
        lead_weight: float = LEAD_WEIGHT,
        hop_weight: float = HOP_WEIGHT,
        cut_best: bool = True,
    ) -> None:
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        for label, value in (("rank_weight", rank_weight), ("lexical_weight", lexical_weight),
                             ("answer_type_weight", answer_type_weight), ("lead_weight", lead_weight),
                             ("hop_weight", hop_weight)):
            if value < 0:
                raise ValueError(f"{label} must be >= 0, got {value}")
        self.resources = resources or Resources()
        self.mmr_lambda = mmr_lambda
        self.passage_weight = passage_weight
        self.title_context = title_context
        self.redundancy_threshold = redundancy_threshold
        self.rank_weight = rank_weight
        self.lexical_weight = lexical_weight
        self.answer_type_weight = answer_type_weight
        self.lead_weight = lead_weight
        self.hop_weight = hop_weight
        self.cut_best = cut_best

    def params(self) -> dict[str, Any]:
        return {"mmr_lambda": self.mmr_lambda, "passage_weight": self.passage_weight,
                "title_context": self.title_context, "redundancy_threshold": self.redundancy_threshold,
                "rank_weight": self.rank_weight, "lexical_weight": self.lexical_weight,
                "answer_type_weight": self.answer_type_weight, "lead_weight": self.lead_weight,
                "hop_weight": self.hop_weight, "cut_best": self.cut_best}

    # ------------------------------------------------------------------ embeddings

    @staticmethod
    def _model_name(embedder: Any) -> str:
        return str(getattr(embedder, "model_path", type(embedder).__name__))

    def _vector_key(self, passage: Passage, model: str) -> str:
        """Where a passage's sentence vectors are cached (query-independent)."""
        return cache_key("extractive/sentences", {"model": model, "title": self.title_context}, passage.text, None,
                         title=passage.title if self.title_context else "")

    def _sentence_vectors(self, passages: list[Passage], spans: list[list[Span]], work: Work) -> np.ndarray:
        """(S, D) normalised vectors of every sentence of every passage, in passage order."""
        embedder = self.resources.get_embedder()
        model = self._model_name(embedder)
        dim = int(getattr(embedder, "dimension", 384))
        parts: list[np.ndarray | None] = []
        todo: list[str] = []
        keys = [self._vector_key(p, model) for p in passages]
        for key, passage, passage_spans in zip(keys, passages, spans, strict=True):
            hit = work.get_array(key, (len(passage_spans),))
            if hit is not None:
                parts.append(hit)
                continue
            parts.append(None)
            todo.extend(self._sentence_input(passage, span) for span in passage_spans)
        fresh = work.encode(embedder, todo) if todo else np.zeros((0, dim), dtype=np.float32)  # (len(todo), D)
        out, offset = [], 0
        for key, passage_spans, part in zip(keys, spans, parts, strict=True):
            if part is None:
                part = fresh[offset : offset + len(passage_spans)]
                offset += len(passage_spans)
                work.put_array(key, part.astype(np.float32))
            out.append(part)
        return np.concatenate(out, axis=0) if out else np.zeros((0, dim), dtype=np.float32)

    def _query_vector(self, query: str, work: Work) -> np.ndarray:
        """(D,) the query's vector, encoded once per compress call."""
        embedder = self.resources.get_embedder()
        key = ("extractive/query", self._model_name(embedder), query)
        if key not in work.memory:
            work.memory[key] = work.encode(embedder, [query])[0]
        return work.memory[key]

    def plan_relevance(
        self, plan: CompressionPlan, query: str, passages: list[Passage], spans: list[list[Span]]
    ) -> None:
        """Count on `plan` what `relevance` will encode with `plan.work`: exactly the sentences of the
        passages whose vectors are neither cached nor already computed in this call (cached ones are
        pinned), and the query unless this call has it already."""
        assert plan.work is not None
        embedder = self.resources.get_embedder()
        model = self._model_name(embedder)
        todo: list[str] = []
        for passage, passage_spans in zip(passages, spans, strict=True):
            if plan.work.get_array(self._vector_key(passage, model), (len(passage_spans),)) is None:
                todo.extend(self._sentence_input(passage, span) for span in passage_spans)
        plan.add_encode(embedder, todo)
        if ("extractive/query", model, query) not in plan.work.memory:
            plan.add_encode(embedder, [query])

    def _sentence_input(self, passage: Passage, span: Span) -> str:
        sentence = passage.text[span[0] : span[1]]
        # The title names the entity the sentence is about ("He was born in ..."): without it
        # pronoun-led sentences look unrelated to a question that names the entity.
        return f"{passage.title}. {sentence}" if self.title_context and passage.title else sentence

    # ------------------------------------------------------------------ selection

    def relevance(
        self, query: str, passages: list[Passage], spans: list[list[Span]], work: Work | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(relevance (S,), sentence vectors (S, D)) for every sentence in passage order.

        `work`: the compress call's (its cache view and tally); None: a fresh one on the cache."""
        work = work if work is not None else Work(self.resources.cache)
        vectors = self._sentence_vectors(passages, spans, work)  # (S, D)
        q = self._query_vector(query, work)  # (D,)
        rel = vectors @ q  # (S,)
        if self.passage_weight and len(rel):
            owner = np.repeat(np.arange(len(passages)), [len(s) for s in spans])  # (S,)
            for i in range(len(passages)):
                rows = owner == i
                if rows.any():
                    mean = vectors[rows].mean(axis=0)
                    mean /= np.linalg.norm(mean) or 1.0
                    rel[rows] += self.passage_weight * float(mean @ q)
        if self.rank_weight and len(rel):
            rel += self.rank_weight * rank_prior([len(s) for s in spans])
        if self.lexical_weight and len(rel):
            texts = [self._sentence_input(p, span) for p, passage_spans in zip(passages, spans, strict=True)
                     for span in passage_spans]
            rel += self.lexical_weight * lexical_overlap(query, texts)
        if self.answer_type_weight and len(rel):
            sentences = [
                p.text[a:b]
                for p, passage_spans in zip(passages, spans, strict=True)
                for a, b in passage_spans
            ]
            rel += self.answer_type_weight * answer_type_match(query, sentences)
        if self.lead_weight and len(rel):
            lead = np.concatenate([np.arange(len(s)) == 0 for s in spans]).astype(np.float64)  # (S,)
            rel += self.lead_weight * lead
        return rel, vectors

    def select(
        self,
        rel: np.ndarray,
        vectors: np.ndarray,
        sizes: list[int],
        budget: int,
        links: list[set[int]] | None = None,
        owner: np.ndarray | None = None,
    ) -> list[int]:
        """Sentence indices chosen in MMR order until no remaining sentence fits the budget.

        `links[i]`: the passages sentence i names (`title_links`), `owner[i]` its passage. Once a
        chosen sentence names a passage, every sentence of that passage gains `hop_weight`.
        """
        rel = rel.copy()
        hopped: set[int] = set()
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
            if links is not None and owner is not None and self.hop_weight:
                for j in links[best] - hopped:
                    hopped.add(j)
                    rel[owner == j] += self.hop_weight
            redundancy = np.maximum(redundancy, vectors @ vectors[best])
            penalty = np.clip(redundancy - thr, 0.0, None) / (1.0 - thr)
        return chosen

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan:
        """Exact: one encode of every sentence not cached (as "title. sentence"), one of the query."""
        before = sum(count_tokens(p.text) for p in passages)
        budget = token_budget(target, before)
        plan = new_plan(self, query=query, passages=passages, target=target, tokens_before=before, budget=budget)
        if budget < before:
            self.plan_relevance(plan, query, passages, [sentence_spans(p.text) for p in passages])
        return plan

    def compress(
        self,
        *,
        query: str,
        passages: list[Passage],
        target: float,
        count_tokens: Callable[[str], int],
        plan: CompressionPlan | None = None,
    ) -> CompressedContext:
        work = start(self, plan, query=query, passages=passages, target=target)
        result = self.compress_with(query, passages, target, count_tokens, work)
        return check(plan, work.report(result))

    def compress_with(
        self, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int], work: Work
    ) -> CompressedContext:
        """`compress` with the call's Work (summarize's fallback shares its own)."""
        sized = size_up(passages, target, count_tokens)
        if sized.fits:
            return identity(passages, sized.before)
        before, budget = sized.before, sized.budget
        spans = [sentence_spans(p.text) for p in passages]
        sentences = [
            _Sentence(i, span, count_tokens(p.text[span[0] : span[1]]))
            for i, (p, passage_spans) in enumerate(zip(passages, spans, strict=True))
            for span in passage_spans
        ]
        rel, vectors = self.relevance(query, passages, spans, work)
        best = sentences[int(np.argmax(rel))] if sentences else None
        if self.cut_best and best is not None and best.tokens > budget:
            # The most relevant sentence alone is longer than the budget. Skipping it left the
            # budget to lesser sentences (docs/compression.md, case notes); its first words,
            # where the subject and its facts are, carry more.
            order = []
        else:
            links = owner = None
            if self.hop_weight and len(passages) > 1:
                owner = np.array([s.passage for s in sentences], dtype=np.int64)  # (S,)
                links = title_links(query, passages,
                                    [passages[s.passage].text[s.span[0]:s.span[1]] for s in sentences], owner)
            order = self.select(rel, vectors, [s.tokens for s in sentences], budget, links, owner)
        keep: dict[int, list[Span]] = {i: [] for i in range(len(passages))}
        for index in order:
            keep[sentences[index].passage].append(sentences[index].span)
        if not order and best is not None and budget > 0:
            # The best sentence is longer than the budget: keep its first words.
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
        result.compute_s = sized.elapsed()
        return result
