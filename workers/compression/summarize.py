"""Summarization compression (TCRA-LLM's first family): extractive and abstractive.

`extractive`: keep the sentences most relevant to the query (MiniLM cosine), choosing them in
maximal-marginal-relevance order so near-duplicates do not eat the budget, until the token
budget is spent; kept sentences stay in their original order.

`summarize`: a local instruct model (SmolLM2-135M by default; any meter target) writes a
query-focused summary of each chunk, with a per-chunk token budget proportional to the
chunk's share of the context. A summary that comes back empty, longer than its budget or
without the chunk's key facts is replaced by the extractive selection, pooled over every chunk
without a summary (those whose share could keep them whole included), so the result is never
longer than the original and never over budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext
from workers.compression.cache import cache_key
from workers.compression.resources import Resources
from workers.compression.text import (
    STOPWORDS,
    Span,
    allocate_weighted,
    protected_words,
    query_keywords,
    render,
    sentence_spans,
    token_budget,
    without_disambiguation,
    word_core,
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


# Weight of the retrieval-rank prior in sentence relevance (see rank_prior); 0 ignores the order.
# Chosen on a tuning split disjoint from the benchmark's questions (docs/benchmarks-compression.md).
RANK_WEIGHT = 0.2


def rank_prior(sentences_per_passage: list[int]) -> np.ndarray:
    """(S,) the retrieval-rank prior of every sentence: -log2(1 + rank of its passage), rank 0 first.

    Passages reach a compression method in the retriever's order (best first, after fusion and
    reranking), and that order knows things one sentence's cosine does not (BM25 matches, the
    reranker's cross-attention, the passage as a whole): the DCG discount turns it into a score
    offset, 0 for the best passage, -1 for the second, -1.58 for the third, ...
    """
    ranks = np.repeat(np.arange(len(sentences_per_passage)), sentences_per_passage)  # (S,)
    return -np.log2(1.0 + ranks)


# Weight of the IDF-weighted query-term overlap (see lexical_overlap); 0 is embeddings only.
LEXICAL_WEIGHT = 0.2


def lexical_overlap(query: str, sentences: list[str]) -> np.ndarray:
    """(S,) share of the query's content-word IDF mass each sentence contains, in [0, 1].

    The lexical half of hybrid retrieval at sentence level: a factoid's answer sentence usually
    repeats the question's rarest words (the entity asked about), which a 384-d sentence vector
    blurs. IDF over the context's own sentences (smoothed), words matched on lower-cased cores.
    """
    terms = sorted(query_keywords(query))
    if not terms or not sentences:
        return np.zeros(len(sentences))
    bags = [{word_core(w).lower() for w in s.split()} for s in sentences]
    df = np.array([sum(t in bag for bag in bags) for t in terms], dtype=np.float64)  # (T,)
    idf = np.log((len(bags) + 1) / (df + 0.5))  # (T,), > 0
    hits = np.array([[t in bag for t in terms] for bag in bags], dtype=np.float64)  # (S, T)
    return hits @ idf / idf.sum()


# Weight of the expected-answer-type match (see answer_type_match); 0 turns it off.
ANSWER_TYPE_WEIGHT = 0.2
# Bonus of a passage's first sentence, which names what the passage is about ("X (born ...) is
# an American basketball coach"): the answer to "who ..." is often only there.
LEAD_WEIGHT = 0.1

# Relevance added to every sentence of a passage once a chosen sentence names its title (see
# `title_links`): the second hop of a multi-hop question. Set a priori like the other signals.
HOP_WEIGHT = 0.2


def title_links(query: str, passages: list[Passage], sentences: list[str], owner: Sequence[int]) -> list[set[int]]:
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


_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})s?\b")
_MONTH = re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\b")
_DIGIT = re.compile(r"\d")
_NUMBER_WORD = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|"
                          r"forty|fifty|hundred|thousand|million|billion|trillion|dozen)\b", re.IGNORECASE)


def expected_answer_type(query: str) -> str | None:
    """"date", "number" or "name" from the question's wh-phrase (classic QA answer typing), else None."""
    q = query.strip().lower()
    if re.match(r"^(when|what year|which year|what date|in what year|in which year|what century|what time)\b", q) \
            or re.search(r"\b(what|which) (year|date|century|decade)\b", q):
        return "date"
    if re.match(r"^(how (many|much|long|old|far|big|tall|high|large|fast|often|deep))\b", q) \
            or re.search(r"\b(what|which) (percentage|percent|number|amount|population)\b", q):
        return "number"
    if re.match(r"^(who|whom|whose|where|which (person|player|team|country|city|company|band|singer|actor))\b", q) \
            or re.search(r"\bwho (is|was|are|were|sings|sang|plays|played|wrote|won|did|does|has|had)\b", q):
        return "name"
    return None


def answer_type_match(query: str, sentences: list[str]) -> np.ndarray:
    """(S,) 1.0 for the sentences that hold something of the question's expected answer type.

    date: a year or a month name; number: a digit or a number word; name: a capitalised word
    not at the sentence start and not one of the question's own words (the answer is rarely a
    word of the question). 0 for every sentence when the type is unknown.
    """
    kind = expected_answer_type(query)
    if kind is None or not sentences:
        return np.zeros(len(sentences))
    asked = query_keywords(query)
    out = np.zeros(len(sentences))
    for i, sentence in enumerate(sentences):
        if kind == "date":
            hit = bool(_YEAR.search(sentence) or _MONTH.search(sentence))
        elif kind == "number":
            hit = bool(_DIGIT.search(sentence) or _NUMBER_WORD.search(sentence))
        else:
            words = [word_core(w) for w in sentence.split()[1:]]
            hit = any(w[:1].isupper() and w.lower() not in asked for w in words if w)
        out[i] = float(hit)
    return out


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
        if self.rank_weight and len(rel):
            rel += self.rank_weight * rank_prior([len(s) for s in spans])
        if self.lexical_weight and len(rel):
            texts = [self._sentence_input(p, span) for p, passage_spans in zip(passages, spans, strict=True)
                     for span in passage_spans]
            rel += self.lexical_weight * lexical_overlap(query, texts)
        if self.answer_type_weight and len(rel):
            sentences = [p.text[a:b] for p, passage_spans in zip(passages, spans, strict=True) for a, b in passage_spans]
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
        best = sentences[int(np.argmax(rel))] if sentences else None
        if self.cut_best and best is not None and best.tokens > budget:
            # The most relevant sentence alone is longer than the budget. Skipping it left the
            # budget to lesser sentences ("who are the characters in yo gabba gabba": one long
            # sentence names them all, and a fictional-character sentence elsewhere was kept);
            # its first words, where the subject and its facts are, carry more.
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
# A chunk's share below this many tokens is passed on to the next chunk: a word or two cut from
# a sentence ("The", a bare name) costs tokens and tells the reader nothing.
MIN_SHARE_TOKENS = 4
KEY_SENTENCES = 2
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
        min_key_recall: float = 0.5,
        hop_weight: float = HOP_WEIGHT,
        pool_whole: bool = True,
    ) -> None:
        if not 0.0 <= min_key_recall <= 1.0:
            raise ValueError(f"min_key_recall must be in [0, 1], got {min_key_recall}")
        if allocation not in ("size", "relevance"):
            raise ValueError(f"allocation must be 'size' or 'relevance', got {allocation!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.relevance_order = relevance_order
        self.allocation = allocation
        self.temperature = temperature
        self.min_key_recall = min_key_recall
        # A chunk whose share could keep it whole joins the pooled extractive choice (False: it is
        # kept whole, the behaviour before; measured side by side in docs/benchmarks-compression.md).
        self.pool_whole = pool_whole
        # The title hop in the pooled extractive choice: it follows links between the chunks in
        # the pool only (a summarized chunk is out of it), which now holds every chunk its share
        # could keep whole. Measured: HotpotQA at keep 20%, 32 of 50 answers kept with it, 30
        # without (docs/benchmarks-compression.md).
        self.hop_weight = hop_weight
        # cut_best=False: `_fallback` already keeps the first words of a best sentence longer than
        # the budget, chosen by the whole context's ranking rather than the leftover chunks'.
        self.extractive = Extractive(resources=self.resources, hop_weight=hop_weight, cut_best=False)

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "relevance_order": self.relevance_order,
                "allocation": self.allocation, "temperature": self.temperature,
                "min_key_recall": self.min_key_recall, "hop_weight": self.hop_weight, "pool_whole": self.pool_whole}

    def faithful(self, query: str, key_sentences: Sequence[str], summary: str, *, fits: int = 0) -> bool:
        """Does the summary keep the key facts of the chunk's most query-relevant sentences?

        A small model's summary often drops exactly the fact asked for while restating the
        chunk's topic ("Knowsley United" for "Knowsley United Women"), or stops after a word;
        such a summary is replaced by the extractive choice for that chunk. The key facts are
        the names and numbers of `key_sentences` (best first; their content words when they have
        none), the question's own words aside. Every one of those in the first `fits` sentences
        must be in the summary (the chunk's share could hold those sentences verbatim, so the
        extractive choice would have kept them all), and at least `min_key_recall` of all. A
        summary of fewer than two words, or with no content word beyond the question's, is never
        faithful.
        """
        if not self.min_key_recall:
            return True
        asked = query_keywords(query)
        cores = [word_core(w).lower() for w in summary.split()]
        said = set(cores)
        if len(cores) < 2 or not {w for w in said if w and w not in STOPWORDS and w not in asked}:
            return False
        text = " " + " ".join(cores) + " "
        facts = [self._key_facts(sentence, asked) for sentence in key_sentences]
        if not any(facts):  # no names or numbers: the content words, at the plain threshold
            facts = [query_keywords(sentence) - asked for sentence in key_sentences]
            fits = 0
        every = set().union(*facts)
        if not every:
            return True

        def kept(fact: str) -> bool:
            return f" {fact} " in text if " " in fact else fact in said

        if not all(kept(f) for f in set().union(*facts[:fits])):
            return False
        return sum(kept(f) for f in every) / len(every) >= self.min_key_recall

    @staticmethod
    def _key_facts(sentence: str, asked: set[str]) -> set[str]:
        """A sentence's names and numbers as lower-cased words, plus its multi-word names whole
        ("Knowsley United" does not keep "Knowsley United Women", whose last word the question
        happens to share)."""
        words = word_spans(sentence)
        # A number's counted word ("15th *century*") is no fact of its own: the number is.
        flags = protected_words(sentence, words, set(), counted=False)
        cores = [word_core(sentence[a:b]).lower() for a, b in words]
        facts = {t for t, f in zip(cores, flags, strict=True) if f and t and t not in asked and t not in STOPWORDS}
        runs: list[list[str]] = [[]]
        for (a, b), core, flag in zip(words, cores, flags, strict=True):
            raw = sentence[a:b]
            name_word = flag and core and not core[0].isdigit() and (core not in STOPWORDS or core in ("of", "the"))
            if not name_word or raw[0] in "([{\"'“‘":
                runs.append([])  # a name ends at a plain word ("and"), an opening bracket or quote
            if name_word:
                runs[-1].append(core)
                if raw[-1] in ",.;:!?)]}\"'”’":
                    runs.append([])  # ... and at its own closing punctuation
        facts |= {" ".join(run) for run in runs if len(run) > 1 and not set(run) <= asked}
        return facts

    def _plan(
        self, query: str, passages: list[Passage]
    ) -> tuple[list[float], list[str], list[list[Span]], list[float]]:
        """(allocation weight, text to show the summarizer, its key sentences' spans best first,
        its best sentence's relevance) per chunk.

        allocation="size": every chunk weighs 1, so shares are ∝ chunk size (TCRA-LLM's
        setting). "relevance": exp((relevance - best) / temperature), so the chunks that matter
        to the question get most of the budget and off-topic ones little or none (and no model
        call). relevance_order: the chunk's sentences most query-relevant first, because a small
        model's "summary" mostly restates the start of its input.
        """
        texts = [p.text for p in passages]
        if not (self.query_aware and (self.relevance_order or self.allocation == "relevance")):
            return [1.0] * len(passages), texts, [[] for _ in passages], [0.0] * len(passages)
        spans = [sentence_spans(p.text) for p in passages]
        rel, _ = self.extractive.relevance(query, passages, spans)  # (S,) in passage order
        bounds = np.cumsum([0] + [len(s) for s in spans])
        per_passage = [rel[bounds[i] : bounds[i + 1]] for i in range(len(passages))]
        # The key facts a summary must keep: those of the chunk's KEY_SENTENCES most relevant
        # sentences (the best one alone often sets the scene while the next holds the answer).
        keys = [[s[k] for k in np.argsort(-r, kind="stable")[:KEY_SENTENCES]] for s, r in zip(spans, per_passage, strict=True)]
        if self.relevance_order:
            texts = [
                " ".join(p.text[a:b] for a, b in (s[k] for k in np.argsort(-r, kind="stable"))) if len(s) > 1 else p.text
                for p, s, r in zip(passages, spans, per_passage, strict=True)
            ]
        best = np.array([float(r.max()) if len(r) else -1.0 for r in per_passage])  # (P,)
        if self.allocation == "size":
            return [1.0] * len(passages), texts, keys, best.tolist()
        return np.exp((best - best.max()) / self.temperature).tolist(), texts, keys, best.tolist()

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
        if result.completion_tokens >= budget and " " in text and not text.endswith((".", "!", "?", '"', ")")):
            # Cut at the token cap: the last word may be a fragment ("Lombard" for "Lombardy").
            text = text.rsplit(" ", 1)[0].rstrip(",;:")
        if key is not None and cache is not None and text:
            cache.put_json(key, {"text": text})
        return text, result.prompt_tokens, result.completion_tokens, result.compute_s

    def _fallback(
        self,
        query: str,
        passages: list[Passage],
        budget: int,
        key_spans: list[list[Span]],
        best_relevance: list[float],
        count_tokens: Callable[[str], int],
    ) -> CompressedContext:
        """The extractive choice over `passages` (the chunks left without a summary) in `budget` tokens."""
        top = int(np.argmax(best_relevance))
        if key_spans[top]:
            best = key_spans[top][0]
            if count_tokens(passages[top].text[best[0] : best[1]]) > budget:
                # The most relevant sentence is longer than the whole budget, so the extractive
                # choice would take lesser sentences whole; its first words (the subject and its
                # facts come first) usually carry more for the question.
                cut = fit_words(passages[top].text, best, budget, count_tokens)
                if cut is not None:
                    return build([passages[top]], {0: [cut]}, count_tokens, 0)
        return self.extractive.compress(query=query, passages=passages, target=float(budget), count_tokens=count_tokens)

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        weights, shown, key_spans, best_relevance = self._plan(query, passages)
        # Chunks in allocation order (heaviest first). Each takes its share of what is left; a
        # summary shorter than its share (they often are) passes the rest on to the chunks after
        # it instead of wasting it, and a share too small to say anything is passed on whole.
        order = sorted(range(len(passages)), key=lambda i: -weights[i])
        texts: dict[int, str] = {}
        kept_spans: dict[int, list[Span]] = {p.chunk_id: [] for p in passages}
        deferred: list[int] = []  # chunks left to the extractive fallback, with the budget they leave
        left = budget
        after = prompt_tokens = completion_tokens = 0
        model_s = 0.0
        for pos, i in enumerate(order):
            passage, count = passages[i], counts[i]
            keys = [passage.text[a:b] for a, b in key_spans[i]]
            rest = order[pos:]
            share = allocate_weighted(left, [counts[j] for j in rest], [weights[j] for j in rest])[0]
            if share >= count:
                left = max(left - count, 0)
                if self.pool_whole:
                    # Its share could keep it whole; it goes to the pooled extractive choice with
                    # its size set aside instead. Kept whole, a top chunk's weakest sentences took
                    # the room of a lesser chunk's answer sentence, as truncation does (SQuAD #0 at
                    # keep 50%: the first two chunks whole, "Ribonucleases and the RNA interference
                    # pathway ..." in the fifth lost); pooled, every sentence competes on
                    # relevance. Alone in the pool, or with the budget to spare, it stays whole.
                    deferred.append(i)
                else:
                    texts[i], kept_spans[passage.chunk_id] = passage.text, [(0, len(passage.text))]
                    after += count
                continue
            if share < MIN_SHARE_TOKENS:
                deferred.append(i)  # its share passes on; its sentences stay candidates of the fallback
                continue
            summary = ""
            if share >= MIN_SUMMARY_TOKENS:
                summary, p_tokens, c_tokens, seconds = self._summarize(query, passage, share, shown[i])
                prompt_tokens, completion_tokens, model_s = (
                    prompt_tokens + p_tokens, completion_tokens + c_tokens, model_s + seconds)
            # How many of the key sentences (best first) the share could hold verbatim.
            sizes = np.cumsum([count_tokens(k) for k in keys]) if keys else np.zeros(0)
            fits = int((sizes <= share).sum())
            if summary and count_tokens(summary) <= share and self.faithful(query, keys, summary, fits=fits):
                used = count_tokens(summary)
                texts[i] = summary
                after += used
                left = max(left - used, 0)
            else:
                # Empty, too long (tokenizers differ between the summarizer and the pipeline),
                # unfaithful (lost the key sentences' names and numbers), or too small a budget
                # to summarize: the chunk's share is set aside for the extractive fallback.
                deferred.append(i)
                left = max(left - share, 0)
        if deferred and budget - after >= MIN_SHARE_TOKENS:
            # One extractive choice over every chunk without a summary, with all the budget the
            # summaries left: a choice per chunk spends each share on that chunk's best sentences
            # even where another chunk's sentence matters more (measured: the per-chunk fallback
            # lost to truncation where extractive over all chunks did not).
            deferred.sort()  # passage order: the extractive rank prior reads it
            fallback = self._fallback(query, [passages[i] for i in deferred], budget - after,
                                      [key_spans[i] for i in deferred], [best_relevance[i] for i in deferred],
                                      count_tokens)
            index = {passages[i].chunk_id: i for i in deferred}
            for kept in fallback.passages:
                texts[index[kept.chunk_id]] = kept.text
                kept_spans[kept.chunk_id] = fallback.kept_spans[kept.chunk_id]
            after += fallback.tokens_after  # its passages' token counts, already measured
        out = [Passage(chunk_id=p.chunk_id, title=p.title, text=texts[i]) for i, p in enumerate(passages) if i in texts]
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
