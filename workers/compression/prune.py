"""Semantic compression (TCRA-LLM's second family): prune words, keep the sentences' meaning.

Both methods run coarse to fine by default (the LongLLMLingua recipe): a sentence stage keeps
the sentences most relevant to the question (the extractive MiniLM ranking) up to
budget / `fine_keep` tokens, then a word stage prunes inside them down to the budget. Without
the sentence stage (`fine_keep=None`) word pruning spreads over every sentence, and at a third
of the tokens it breaks most multi-word answers (see docs/benchmarks-compression.md).

`semantic_prune`: a word matters as much as deleting it moves its sentence's MiniLM embedding.
All single-word-deletion variants of the sentences are embedded in one batched encode call per
round; the lowest-impact words go first (with `rounds` > 1, impacts are recomputed on the
shortened sentences, since a word's impact changes once its neighbours are gone).

`surprisal_prune`: LLMLingua's idea with a small causal LM (SmolLM2-135M by default): a token
the model finds predictable (low -log p) carries little information. Surprisal is computed per
passage conditioned on the question (query-aware default) or on the title only (cacheable per
chunk); the highest-surprisal words (or tokens) are kept up to the budget.

Protected spans survive the word stage: numbers, named entities (a heuristic: runs of
capitalised words, see `text.protected_words`) and words of the query. The sentence stage keeps
the protected words of its sentences within 70% of the budget, so protection never pushes the
result over budget; with `fine_keep=None`, surprisal pruning keeps every protected word even
past the budget (reported in tokens_after).

Both choose from units (word or token spans) with a score, a token size and a protected flag;
`select` and `finish` below are shared.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext
from workers.compression.cache import cache_key
from workers.compression.resources import Resources
from workers.compression.summarize import build, identity
from workers.compression.text import (
    STOPWORDS,
    Span,
    allocate,
    flows_on,
    protected_words,
    query_keywords,
    sentence_spans,
    token_budget,
    word_core,
    word_spans,
)
from workers.prompting.base import Passage


@dataclass
class Unit:
    """One prunable piece of a passage: a word (or a token) span, its cost and its value."""

    passage: int
    span: Span
    size: int
    score: float = 0.0
    protected: bool = False
    group: int = -1  # the unit's sentence in relevance order (0 = most relevant); -1: no ranking
    bridge: bool = False  # a function word joining its sentence neighbours (see `bridge_words`)
    head: bool = False  # the content word a protected word qualifies ("German *mathematician*")


# A run of at most this many dropped function words between two kept units is restored.
MAX_BRIDGE = 2


def select(units: Sequence[Unit], budget: int) -> list[bool]:
    """Keep protected units, then the highest-scoring others while they fit the budget.

    Ungrouped units (`group` -1, no sentence ranking): protected units are kept even when they
    alone exceed the budget (the caller reports the overshoot in tokens_after); a unit that does
    not fit is skipped so smaller ones can still.

    Units ranked into groups (`group` >= 0: their sentence's relevance rank) split the budget by
    `dynamic_budgets` over each sentence's whole size, protected words included: the most
    relevant sentences are kept whole, the later ones pruned harder. A sentence's protected
    words are kept when its share covers them and the rest of the share goes to its best other
    units. When the share is smaller than its protected words, the sentence keeps only as many
    of them as fit, best score first, together with the words they qualify (`Unit.head`: "German
    *mathematician*", HotpotQA #56), ahead of its other words (protected ones stay protected:
    `finish` never trims them): protection of a low-ranked sentence's names must not starve a
    better one (NQ #120: the city names of a Toyota passage took the room of "They are an example
    of special economic zones", ranked second). Whatever the shares leave goes to the best
    remaining units anywhere.

    Bridges: word pruning drops function words first (they move neither the embedding nor the
    LM's surprise), which breaks multi-word answers apart ("current denomination of U.S.
    currency" became "current denomination U.S. currency"). A unit kept next to a run of at most
    MAX_BRIDGE dropped bridge units (`Unit.bridge`) with a kept unit on the run's other side
    takes the run along when both fit; the run then scores as the weaker of its two neighbours,
    so `finish` trims it no earlier than them.
    """
    groups = max((u.group for u in units), default=-1) + 1
    # Ungrouped protected units are kept outright; grouped ones only within their sentence's share.
    keep = [u.protected and u.group < 0 for u in units]
    left = budget - sum(u.size for u, k in zip(units, keep, strict=True) if k)

    def closing(i: int) -> list[tuple[int, float]]:
        """The dropped bridge units that keeping unit i would join to a kept unit, with their floor score."""
        out: list[tuple[int, float]] = []
        for step in (-1, 1):
            run, j = [], i + step
            while (0 <= j < len(units) and not keep[j] and units[j].bridge and len(run) < MAX_BRIDGE
                   and units[j].passage == units[i].passage):
                run.append(j)
                j += step
            if run and 0 <= j < len(units) and keep[j] and units[j].passage == units[i].passage:
                out.extend((k, min(units[i].score, units[j].score)) for k in run)
        return out

    def take(i: int, room: int) -> int:
        """Keep unit i (and the bridges it closes, when they fit too) within `room`; tokens spent."""
        if keep[i] or units[i].size > room:
            return 0
        keep[i] = True
        spent = units[i].size
        run = closing(i)
        if run and spent + sum(units[k].size for k, _ in run) <= room:
            for k, floor in run:
                keep[k] = True
                units[k].score = max(units[k].score, floor)
                spent += units[k].size
        return spent

    if groups and left > 0:
        sizes, guarded = [0] * groups, [0] * groups  # tokens per group in rank order: all, protected
        for u in units:
            if u.group >= 0:
                sizes[u.group] += u.size
                guarded[u.group] += u.size if u.protected else 0
        room = dynamic_budgets(sizes, left)
        starved = [guarded[g] > room[g] for g in range(groups)]
        for i, u in enumerate(units):
            if u.group >= 0 and u.protected and not starved[u.group]:
                keep[i] = True
                room[u.group] -= u.size
                left -= u.size
        # The protected words still out are a starved sentence's: they go first within its share.
        grouped = (i for i, u in enumerate(units) if not keep[i] and u.group >= 0)
        for i in sorted(grouped, key=lambda i: (not (units[i].protected or units[i].head), -units[i].score)):
            spent = take(i, min(room[units[i].group], left))
            room[units[i].group] -= spent
            left -= spent
    for i in sorted((i for i, u in enumerate(units) if not keep[i]), key=lambda i: (not units[i].protected, -units[i].score)):
        if left <= 0:
            break
        left -= take(i, left)
    return keep


def bridge_words(text: str, words: Sequence[Span], protected: Sequence[bool]) -> list[bool]:
    """Which words of one sentence are function words joining their neighbours into one phrase.

    A bridge word is an unprotected stopword with a word before and after it in the sentence,
    only whitespace on either side and no punctuation on it or ending the word before it
    ("denomination *of* U.S."; not "1990, *and* ...").
    """
    out = []
    for k, (a, b) in enumerate(words):
        core = word_core(text[a:b]).lower()
        out.append(
            0 < k < len(words) - 1
            and not protected[k]
            and core in STOPWORDS
            and text[a:b].lower() == core  # no punctuation attached
            and flows_on(text, words, k)
            and not text[b:words[k + 1][0]].strip()
        )
    return out


# Shape of the dynamic ratio's decay over the relevance ranks (1 linear; 2 spares the head more).
DYNAMIC_POWER = 2.0


def dynamic_budgets(sizes: Sequence[int], budget: int, power: float = DYNAMIC_POWER) -> list[int]:
    """Token budgets for sentences in relevance order: the best kept whole, later ones pruned harder.

    LongLLMLingua's dynamic compression ratio at sentence level: sentence i (of m, 0 = most
    relevant) keeps the share k_i = clip(1 - c * (i / (m - 1)) ** power, 0, 1) of its tokens, with c chosen
    (bisection) so the budgets add up to `budget`. The answer usually sits in the one or two
    most relevant sentences, which word pruning then leaves intact; the filler it removes comes
    from the sentences that were only kept for context.
    """
    m = len(sizes)
    total = sum(sizes)
    if m == 0 or budget >= total:
        return list(sizes)
    if m == 1:
        return [budget]

    def kept(c: float) -> list[float]:
        return [n * min(1.0, max(0.0, 1.0 - c * (i / (m - 1)) ** power)) for i, n in enumerate(sizes)]

    lo, hi = 0.0, float(m) ** power  # this c drops everything after the first sentence
    if sum(kept(hi)) > budget:  # even the first sentence alone is over budget
        return [budget] + [0] * (m - 1)
    for _ in range(50):
        mid = (lo + hi) / 2
        if sum(kept(mid)) > budget:
            lo = mid
        else:
            hi = mid
    # Largest remainder, not floors: a floor cost every sentence up to a token, so the most
    # relevant ones, kept 98% by the curve, each lost a word ("The Mongols' *extensive* West Asian
    # ... contacts", SQuAD #55) and the tokens went to whichever words scored best elsewhere.
    exact = kept(hi)
    shares = [int(x) for x in exact]
    rest = min(budget, total) - sum(shares)
    for i in sorted(range(m), key=lambda i: shares[i] - exact[i])[: max(rest, 0)]:
        shares[i] += 1 if shares[i] < sizes[i] else 0
    return shares


def finish(
    passages: list[Passage],
    units: Sequence[Unit],
    keep: list[bool],
    budget: int,
    count_tokens: Callable[[str], int],
    before: int,
) -> CompressedContext:
    """Render kept units; while the rendered text is over budget, drop kept units (least relevant sentence first).

    Units are sized one by one but rendered joined, and tokenizers merge across spaces
    differently, so the sum of sizes only estimates the rendered count.
    """
    def assemble() -> CompressedContext:
        spans: dict[int, list[Span]] = {}
        for unit, kept in zip(units, keep, strict=True):
            if kept:
                spans.setdefault(unit.passage, []).append(unit.span)
        return build(passages, spans, count_tokens, before)

    result = assemble()
    # Trim from the least relevant sentence first (the highest group rank), lowest score first
    # within it: the dynamic ratio kept the most relevant sentences whole, and trimming by score
    # alone took their predictable words ("the 12th *century*") before any filler elsewhere.
    droppable = sorted((i for i, k in enumerate(keep) if k and not units[i].protected),
                       key=lambda i: (-units[i].group, units[i].score))
    next_drop = 0  # droppable[:next_drop] are dropped already
    while result.tokens_after > budget and next_drop < len(droppable):
        # Drop about the excess at once (by the units' own sizes), then re-measure.
        excess = result.tokens_after - budget
        while next_drop < len(droppable) and excess > 0:
            i = droppable[next_drop]
            next_drop += 1
            keep[i] = False
            excess -= units[i].size
        result = assemble()
    return result


# ---------------------------------------------------------------------------- coarse stage


@dataclass
class Sentence:
    passage: int
    span: Span
    words: list[Span]
    sizes: list[int]  # tokens of each word, counted with a leading space as it renders
    protected: list[bool]

    @property
    def tokens(self) -> int:
        return sum(self.sizes)

    @property
    def protected_tokens(self) -> int:
        return sum(s for s, p in zip(self.sizes, self.protected, strict=True) if p)


def sentences_of(
    passages: list[Passage], count_tokens: Callable[[str], int], keywords: set[str] | None
) -> list[list[Sentence]]:
    """Sentences per passage with their words, word sizes and (when `keywords` is given) protection."""
    out = []
    for i, passage in enumerate(passages):
        text = passage.text
        words = word_spans(text)
        flags = (protected_words(text, words, keywords, names=[passage.title] if passage.title else [])
                 if keywords is not None else [False] * len(words))
        by_start = {w[0]: k for k, w in enumerate(words)}
        sentences = []
        for span in sentence_spans(text):
            mine = word_spans(text, span)
            ks = [by_start[w[0]] for w in mine]
            sentences.append(
                Sentence(
                    passage=i,
                    span=span,
                    words=mine,
                    sizes=[max(1, count_tokens(" " + text[a:b])) for a, b in mine],
                    protected=[flags[k] for k in ks],
                )
            )
        out.append(sentences)
    return out


# At most this share of the budget may go to protected words of the sentences the coarse stage
# keeps; the rest is left for the fine stage's own choice (else it would choose nothing).
PROTECTED_MAX_SHARE = 0.7


def coarse_select(sentences: list[Sentence], scores: np.ndarray, budget: int, fine_keep: float) -> list[int]:
    """Indices of the sentences the fine stage may prune from (best score first).

    The coarse stage keeps the best-scoring sentences up to budget / fine_keep tokens (the fine
    stage then keeps about `fine_keep` of them), then drops the weakest kept sentences until
    their protected words fit in PROTECTED_MAX_SHARE of the budget, so protection never forces
    the result over budget.
    """
    limit = budget / fine_keep
    chosen, used = [], 0
    for i in np.argsort(-scores, kind="stable"):
        if used + sentences[i].tokens <= limit:
            chosen.append(int(i))
            used += sentences[i].tokens
    while chosen and sum(sentences[i].protected_tokens for i in chosen) > PROTECTED_MAX_SHARE * budget:
        chosen.pop()
    return chosen


def ranked_sentences(
    sentences: list[Sentence], scores: np.ndarray, budget: int, fine_keep: float
) -> tuple[list[Sentence], list[int]]:
    """The coarse stage's sentences in text order, and each one's relevance rank (0 = best)."""
    chosen = coarse_select(sentences, scores, budget, fine_keep)
    rank_of = {i: r for r, i in enumerate(chosen)}
    ordered = sorted(chosen)
    return [sentences[i] for i in ordered], [rank_of[i] for i in ordered]


def _relevance(resources: Resources, query: str, passages: list[Passage]) -> np.ndarray:
    """Query relevance of every sentence (passage order), the extractive method's ranking."""
    from workers.compression.summarize import Extractive

    extractive = Extractive(resources=resources)
    rel, _ = extractive.relevance(query, passages, [sentence_spans(p.text) for p in passages])
    return rel


# ---------------------------------------------------------------------------- semantic impact

# MiniLM reads at most 256 word pieces; longer sentences are cut into windows of this many
# words so every word's deletion is actually seen by the embedder.
MAX_WINDOW_WORDS = 48


class SemanticPrune:
    """Drop the words whose deletion moves their sentence's embedding least.

    Query-aware (default), coarse to fine: the sentences most relevant to the query (the
    extractive ranking) are kept up to budget / `fine_keep` tokens, then words are pruned by
    semantic impact inside them down to the budget; `fine_keep=None` prunes words everywhere
    (pure word-level pruning, no coarse stage). `query_aware=False`: each chunk is pruned
    alone to its proportional share by impact only, and whole results are cached per
    (chunk, share).

    Cost per round: one MiniLM encode of (words + windows) short texts over the sentences
    being pruned; impacts are cached per sentence text, so a chunk seen before costs nothing.
    """

    name = "semantic_prune"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        fine_keep: float | None = 0.6,
        rounds: int = 1,
        protect: bool = True,
        dynamic: bool = True,
        bridge: bool = True,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if fine_keep is not None and not 0.0 < fine_keep <= 1.0:
            raise ValueError(f"fine_keep must be in (0, 1] or None, got {fine_keep}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.fine_keep = fine_keep
        self.rounds = rounds
        self.protect = protect
        self.dynamic = dynamic
        self.bridge = bridge

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "fine_keep": self.fine_keep, "rounds": self.rounds,
                "protect": self.protect, "dynamic": self.dynamic, "bridge": self.bridge}

    def impacts(self, windows: list[list[str]]) -> list[np.ndarray]:
        """Deletion impact of every word of every window: impact[i] = 1 - cos(e(w), e(w without word i)).

        All variants of all windows not in the cache go to the embedder in one encode call;
        results are cached per window text (query- and target-independent).
        """
        embedder = self.resources.get_embedder()
        cache = self.resources.cache
        model = str(getattr(embedder, "model_path", type(embedder).__name__))
        out: list[np.ndarray | None] = []
        keys: list[str | None] = []
        inputs: list[str] = []
        for words in windows:
            key = cache_key(f"{self.name}/impacts", {"model": model}, " ".join(words)) if cache is not None else None
            hit = cache.get_array(key) if cache is not None and key is not None else None
            keys.append(key)
            if hit is not None and hit.shape == (len(words),):
                out.append(hit.astype(np.float64))
                continue
            out.append(None)
            if len(words) > 1:
                inputs.append(" ".join(words))
                inputs.extend(" ".join(words[:i] + words[i + 1 :]) for i in range(len(words)))
        vectors = embedder.encode(inputs) if inputs else None  # (windows + words, D), normalised
        row = 0
        for k, words in enumerate(windows):
            if out[k] is not None:
                continue
            if len(words) <= 1:
                impact = np.ones(len(words))  # a lone word: deleting it deletes everything
            else:
                assert vectors is not None
                base = vectors[row]  # (D,)
                variants = vectors[row + 1 : row + 1 + len(words)]  # (n, D)
                # float32 like the cached copy, so cached and fresh runs rank ties alike.
                impact = (1.0 - variants @ base).astype(np.float32).astype(np.float64)  # (n,)
                row += 1 + len(words)
            out[k] = impact
            if cache is not None and keys[k] is not None:
                cache.put_array(keys[k], impact.astype(np.float32))
        return [x for x in out if x is not None]

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        if self.query_aware:
            result = self._prune(query, passages, budget, count_tokens, before, coarse=self.fine_keep is not None)
        else:
            result = self._per_chunk(passages, counts, budget, count_tokens, before)
        result.compute_s = time.perf_counter() - started
        return result

    def _per_chunk(self, passages, counts, budget, count_tokens, before) -> CompressedContext:
        """Query-independent: each chunk pruned alone to its share, whole results cached."""
        cache = self.resources.cache
        kept: dict[int, list[Span]] = {}
        for i, (passage, share) in enumerate(zip(passages, allocate(budget, counts), strict=True)):
            key = cache_key(self.name, self.params(), passage.text, share)
            hit = cache.get_json(key) if cache is not None else None
            if hit is None:
                one = self._prune("", [passage], share, count_tokens, counts[i], coarse=False)
                hit = [list(s) for s in one.kept_spans.get(passage.chunk_id, [])]
                if cache is not None:
                    cache.put_json(key, hit)
            kept[i] = [(a, b) for a, b in hit]
        return build(passages, kept, count_tokens, before)

    def _prune(self, query, passages, budget, count_tokens, before, *, coarse: bool) -> CompressedContext:
        per_passage = sentences_of(passages, count_tokens, query_keywords(query) if self.protect else None)
        sentences = [s for group in per_passage for s in group]
        ranks: list[int] | None = None
        if coarse and sentences:
            assert self.fine_keep is not None
            sentences, ranks = ranked_sentences(sentences, _relevance(self.resources, query, passages), budget,
                                                self.fine_keep)
        if not self.dynamic:
            ranks = None
        units: list[Unit] = []
        windows: list[list[int]] = []  # unit indices per window
        for n, sentence in enumerate(sentences):
            group = ranks[n] if ranks is not None else -1
            text = passages[sentence.passage].text
            bridges = (bridge_words(text, sentence.words, sentence.protected)
                       if self.bridge else [False] * len(sentence.words))
            for k in range(0, len(sentence.words), MAX_WINDOW_WORDS):
                window = []
                for w in range(k, min(k + MAX_WINDOW_WORDS, len(sentence.words))):
                    window.append(len(units))
                    flag = sentence.protected[w]
                    # As in SurprisalPrune: only an unprotected word is a head (`select` ranks
                    # protected words first anyway).
                    head = not flag and follows_protected(text, sentence.words, sentence.protected, w)
                    units.append(Unit(passage=sentence.passage, span=sentence.words[w], size=sentence.sizes[w],
                                      protected=flag, group=group, bridge=bridges[w], head=head))
                windows.append(window)
        # Without a sentence stage to drop sentences, protected words can outnumber the budget:
        # then protection becomes a priority (ranked above every other word), not a guarantee.
        boost = [0.0] * len(units)
        if sum(u.size for u in units if u.protected) > PROTECTED_MAX_SHARE * budget:
            for j, unit in enumerate(units):
                boost[j], unit.protected = (1.0 if unit.protected else 0.0), False
        alive = [True] * len(units)
        total = sum(u.size for u in units)
        for round_no in range(1, self.rounds + 1):
            # Impacts of the words still alive, per window as it now reads.
            live_windows = [[j for j in w if alive[j]] for w in windows]
            live_windows = [w for w in live_windows if w]
            texts = [[passages[units[j].passage].text[slice(*units[j].span)] for j in w] for w in live_windows]
            for window, impact in zip(live_windows, self.impacts(texts), strict=True):
                for j, value in zip(window, impact, strict=True):
                    units[j].score = float(value) + boost[j]  # impacts lie in [0, 1]
            live = [j for j in range(len(units)) if alive[j]]
            # Each round removes an equal share of what has to go.
            goal = int(math.floor(total - (total - budget) * round_no / self.rounds))
            for j, kept in zip(live, select([units[j] for j in live], goal), strict=True):
                alive[j] = kept
        return finish(passages, units, alive, budget, count_tokens, before)


# A phrase unit spans at most this many words, so the word stage still chooses finely.
MAX_PHRASE_WORDS = 6


def phrases(text: str, words: Sequence[Span], protected: Sequence[bool]) -> list[list[int]]:
    """Word indices grouped into phrases: runs of adjacent unprotected content words.

    Two words join when both are content words (not stopwords), only whitespace separates them
    and the first does not end in punctuation. A causal LM finds the rest of a name predictable
    once it has seen its first word ("yellow" is surprising, "fever" after it is not), so
    word-by-word surprisal pruning keeps "yellow" and drops "fever"; as one unit scored by its
    most surprising word, the phrase is kept or dropped whole. Protected words stay units of
    their own (they survive anyway, and protection must not spread to their neighbours).
    """
    cores = [word_core(text[a:b]).lower() for a, b in words]
    content = [bool(c) and c not in STOPWORDS and not p for c, p in zip(cores, protected, strict=True)]
    groups: list[list[int]] = []
    for k in range(len(words)):
        if (
            groups
            and len(groups[-1]) < MAX_PHRASE_WORDS
            and content[k]
            and content[k - 1]
            and flows_on(text, words, k)
        ):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def follows_protected(text: str, words: Sequence[Span], protected: Sequence[bool], k: int) -> bool:
    """Word k is an unprotected content word right after a protected one ("U.S. *currency*", "12th *century*").

    Only whitespace between them and no sentence punctuation ending the protected word (an
    abbreviation's own dots, as in "U.S.", are part of it).
    """
    if k == 0 or protected[k] or not protected[k - 1]:
        return False
    core = word_core(text[slice(*words[k])]).lower()
    before = text[slice(*words[k - 1])]
    return (bool(core) and core not in STOPWORDS and not text[words[k - 1][1]:words[k][0]].strip()
            and not before.endswith((",", ";", ":", "!", "?", ")")) and not _sentence_end(before))


def _sentence_end(word: str) -> bool:
    """A final period that ends a sentence, not an abbreviation's ("U.S.", "Dr.")."""
    return word.endswith(".") and word.count(".") == 1 and len(word) > 3


# ---------------------------------------------------------------------------- surprisal

# Scorings a SurprisalPrune keeps in memory (a passage's: two float/int arrays of its tokens).
MEMO_SIZE = 4096


class SurprisalPrune:
    """Keep the tokens a small causal LM finds most surprising, plus protected spans.

    Coarse to fine like LongLLMLingua: with `fine_keep` set (default) the sentences most relevant
    to the query (the extractive MiniLM ranking; without a query, the sentences of highest mean
    surprisal) are kept up to budget / fine_keep tokens, then surprisal pruning inside them
    reaches the budget. Protected words of the kept sentences always survive (the coarse stage
    keeps them within 70% of the budget); with `fine_keep=None` (plain LLMLingua) every
    protected word of the context survives, even past the budget.

    Cost: one forward pass of the scorer per chunk that has a kept sentence, over (prefix + chunk)
    tokens (model_prompt_tokens reports them). `granularity="word"` (default) scores a word by
    the highest surprisal of its tokens and keeps or drops whole words, which keeps multi-token
    names intact, and with `cohesion` (default) whole phrases of adjacent content words (see
    `phrases`); `"token"` keeps single tokens like LLMLingua. `query_aware=False` conditions
    on the title only, prunes each chunk to its own share, and caches surprisals per chunk.
    """

    name = "surprisal_prune"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        fine_keep: float | None = 0.6,
        granularity: str = "word",
        protect: bool = True,
        aggregate: str = "max",
        dynamic: bool = True,
        cohesion: bool = True,
        bridge: bool = True,
    ) -> None:
        if granularity not in ("word", "token"):
            raise ValueError(f"granularity must be 'word' or 'token', got {granularity!r}")
        if aggregate not in ("max", "mean", "first"):
            raise ValueError(f"aggregate must be 'max', 'mean' or 'first', got {aggregate!r}")
        if fine_keep is not None and not 0.0 < fine_keep <= 1.0:
            raise ValueError(f"fine_keep must be in (0, 1] or None, got {fine_keep}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.fine_keep = fine_keep
        self.granularity = granularity
        self.protect = protect
        self.aggregate = aggregate
        self.dynamic = dynamic
        self.cohesion = cohesion
        self.bridge = bridge
        # The last MEMO_SIZE (prefix, passage) scorings, so one context compressed at several
        # targets (a budget retry, the benchmark) runs the scorer once.
        self._memo: OrderedDict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._memo_lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "fine_keep": self.fine_keep, "granularity": self.granularity,
                "protect": self.protect, "aggregate": self.aggregate, "dynamic": self.dynamic,
                "cohesion": self.cohesion, "bridge": self.bridge}

    def prefix(self, query: str, passage: Passage) -> str:
        head = f"Question: {query}\n" if self.query_aware and query else ""
        return f"{head}Title: {passage.title}\nText:"

    def surprisals(self, query: str, passage: Passage) -> tuple[np.ndarray, np.ndarray, int]:
        """(-log p per passage token (T,), char offsets into passage.text (T, 2), tokens the scorer read).

        The passage is tokenized on its own after the prefix ids, so offsets index into its text
        and the first passage token is conditioned on the prefix. Cached when the prefix is
        query-independent.
        """
        import torch

        lm = self.resources.get_scorer()
        cache = self.resources.cache
        key = None
        if cache is not None and not (self.query_aware and query):
            key = cache_key(f"{self.name}/surprisal", {"model": lm.name}, passage.text, None,
                            prefix=self.prefix("", passage))
            hit = cache.get_array(key)
            if hit is not None:
                return hit[:, 0].astype(np.float64), hit[:, 1:].astype(np.int64), 0
        memo_key = (str(lm.name), self.prefix(query, passage), passage.text)
        with self._memo_lock:
            if memo_key in self._memo:
                self._memo.move_to_end(memo_key)
                surprisal, offsets = self._memo[memo_key]
                return surprisal, offsets, 0  # the scorer did not run
        tokenizer = lm.tokenizer
        # The leading space makes the first word tokenize as it does mid-text (after "Text:").
        encoded = tokenizer(" " + passage.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        offsets = np.array([(max(a - 1, 0), max(b - 1, 0)) for a, b in encoded["offset_mapping"]], dtype=np.int64)
        prefix_ids = tokenizer.encode(self.prefix(query, passage), add_special_tokens=False)
        input_ids = torch.tensor([prefix_ids + ids], dtype=torch.long, device=lm.device)  # (1, P + T)
        with lm.lock, torch.inference_mode():
            logits = lm.model(input_ids=input_ids).logits[0]  # (P + T, V)
            # Row t predicts token t + 1: the passage tokens are predicted by rows P-1 .. P+T-2.
            logprobs = torch.log_softmax(logits[len(prefix_ids) - 1 : -1].float(), dim=-1)  # (T, V)
            target = torch.tensor(ids, device=logprobs.device)  # (T,)
            surprisal = -logprobs.gather(1, target[:, None])[:, 0]  # (T,)
            # float32 like the cached copy, so cached and fresh runs rank ties alike.
            surprisal = surprisal.cpu().numpy().astype(np.float32).astype(np.float64)
        if key is not None and cache is not None:
            cache.put_array(key, np.concatenate([surprisal[:, None], offsets], axis=1).astype(np.float32))
        with self._memo_lock:
            self._memo[memo_key] = (surprisal, offsets)
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return surprisal, offsets, len(prefix_ids) + len(ids)

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        if self.query_aware and query:
            result = self._prune(query, passages, budget, count_tokens, before)
        else:
            # Query-independent: every chunk keeps its own share, so its result depends on the
            # chunk alone (and its surprisals come from the cache after the first time).
            parts = [
                self._prune("", [p], share, count_tokens, n)
                for p, n, share in zip(passages, counts, allocate(budget, counts), strict=True)
            ]
            kept = {i: part.kept_spans.get(p.chunk_id, []) for i, (p, part) in enumerate(zip(passages, parts, strict=True))}
            result = build(passages, kept, count_tokens, before)
            result.model_prompt_tokens = sum(part.model_prompt_tokens for part in parts)
        result.compute_s = time.perf_counter() - started
        if result.model_prompt_tokens:
            result.model = str(self.resources.get_scorer().name)
        return result

    def _prune(self, query, passages, budget, count_tokens, before) -> CompressedContext:
        if budget <= 0:
            return build(passages, {}, count_tokens, before)
        keywords = query_keywords(query) if self.protect else None
        per_passage = sentences_of(passages, count_tokens, keywords)
        sentences = [s for group in per_passage for s in group]
        scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        read = 0
        ranks: list[int] | None = None

        def scores_of(i: int) -> tuple[np.ndarray, np.ndarray]:
            nonlocal read
            if i not in scored:
                surprisal, offsets, n = self.surprisals(query, passages[i])
                scored[i] = (surprisal, offsets)
                read += n
            return scored[i]

        if self.fine_keep is not None and sentences:
            if query:
                rank = _relevance(self.resources, query, passages)
            else:
                rank = np.array([self._mean_surprisal(s, *scores_of(s.passage)) for s in sentences])
            sentences, ranks = ranked_sentences(sentences, rank, budget, self.fine_keep)
        if not self.dynamic:
            ranks = None

        units: list[Unit] = []
        for n, sentence in enumerate(sentences):
            group = ranks[n] if ranks is not None else -1
            text = passages[sentence.passage].text
            surprisal, offsets = scores_of(sentence.passage)
            starts = np.array([w[0] for w in sentence.words], dtype=np.int64)
            # Token t belongs to the word holding its last character (-1: outside this sentence).
            last = np.maximum(offsets[:, 1] - 1, 0)
            inside = (last >= sentence.span[0]) & (last < sentence.span[1])
            owner = np.where(inside, np.searchsorted(starts, last, side="right") - 1, -1)  # (T,)
            if self.granularity == "word":
                scores = [self._aggregate(surprisal[owner == k]) for k in range(len(sentence.words))]
                groups = (phrases(text, sentence.words, sentence.protected) if self.cohesion
                          else [[k] for k in range(len(sentence.words))])
                bridges = (bridge_words(text, sentence.words, sentence.protected) if self.bridge
                           else [False] * len(sentence.words))
                for ks in groups:
                    span = (sentence.words[ks[0]][0], sentence.words[ks[-1]][1])
                    size = sum(sentence.sizes[k] for k in ks)
                    flag = any(sentence.protected[k] for k in ks)  # only single words are protected
                    score = max(scores[k] for k in ks)
                    head = not flag and follows_protected(text, sentence.words, sentence.protected, ks[0])
                    if self.cohesion and head:
                        # The same reason as `phrases`: after "U.S." the LM predicts "currency", after
                        # "12th" it predicts "century"; the head word scores as its protected modifier.
                        score = max(score, scores[ks[0] - 1])
                    units.append(Unit(sentence.passage, span, size, score, flag, group,
                                      bridge=len(ks) == 1 and bridges[ks[0]], head=head))
            else:
                for t in np.flatnonzero(owner >= 0):
                    a, b = int(offsets[t, 0]), int(offsets[t, 1])
                    while a < b and text[a].isspace():  # BPE tokens carry their leading space
                        a += 1
                    if b > a:
                        units.append(Unit(sentence.passage, (a, b), 1, float(surprisal[t]),
                                          sentence.protected[owner[t]], group))
        result = finish(passages, units, select(units, budget), budget, count_tokens, before)
        result.model_prompt_tokens = read
        return result

    def _aggregate(self, values: np.ndarray) -> float:
        if not len(values):
            return 0.0
        if self.aggregate == "max":
            return float(values.max())
        if self.aggregate == "mean":
            return float(values.mean())
        return float(values[0])

    @staticmethod
    def _mean_surprisal(sentence: Sentence, surprisal: np.ndarray, offsets: np.ndarray) -> float:
        inside = (offsets[:, 0] >= sentence.span[0]) & (offsets[:, 1] <= sentence.span[1])
        return float(surprisal[inside].mean()) if inside.any() else 0.0
