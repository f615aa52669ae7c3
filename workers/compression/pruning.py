"""What the word pruners (`semantic_prune`, `surprisal_prune`) share: units, the choice, rendering.

Both run coarse to fine (the LongLLMLingua recipe): `ranked_sentences` keeps the sentences most
relevant to the question up to budget / `fine_keep` tokens, then each method scores word units
inside them and `select` keeps the best within per-sentence budgets (`dynamic_budgets`), with
protected words (numbers, names, question words) and the function words bridging kept neighbours;
`finish` renders them and trims any overshoot. Why the rules: docs/compression.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workers.compression.base import CompressedContext, build
from workers.compression.extractive import Extractive
from workers.compression.plan import CompressionPlan, Work
from workers.compression.resources import Resources
from workers.compression.text import (
    STOPWORDS,
    Span,
    flows_on,
    protected_words,
    sentence_spans,
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


def _closing(units: Sequence[Unit], keep: list[bool], i: int) -> list[tuple[int, float]]:
    """The dropped bridge units that keeping unit i would join to a kept unit, with their floor score."""
    out: list[tuple[int, float]] = []
    for step in (-1, 1):
        run: list[int] = []
        j = i + step
        while (0 <= j < len(units) and not keep[j] and units[j].bridge and len(run) < MAX_BRIDGE
               and units[j].passage == units[i].passage):
            run.append(j)
            j += step
        if run and 0 <= j < len(units) and keep[j] and units[j].passage == units[i].passage:
            out.extend((k, min(units[i].score, units[j].score)) for k in run)
    return out


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
    *mathematician*"), ahead of its other words (protected ones stay protected: `finish` never
    trims them): protection of a low-ranked sentence's names must not starve a better one
    (case notes in docs/compression.md). Whatever the shares leave goes to the best remaining
    units anywhere.

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

    def take(i: int, room: int) -> int:
        """Keep unit i (and the bridges it closes, when they fit too) within `room`; tokens spent."""
        if keep[i] or units[i].size > room:
            return 0
        keep[i] = True
        spent = units[i].size
        run = _closing(units, keep, i)
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
    for i in sorted(
        (i for i, u in enumerate(units) if not keep[i]),
        key=lambda i: (not units[i].protected, -units[i].score),
    ):
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
    # relevant ones, kept 98% by the curve, each lost a word (docs/compression.md, case notes).
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


def _relevance(resources: Resources, query: str, passages: list[Passage], work: Work | None = None) -> np.ndarray:
    """Query relevance of every sentence (passage order), the extractive method's ranking."""
    extractive = Extractive(resources=resources)
    rel, _ = extractive.relevance(query, passages, [sentence_spans(p.text) for p in passages], work)
    return rel


def plan_relevance(resources: Resources, plan: CompressionPlan, query: str, passages: list[Passage]) -> None:
    """Count on `plan` the encodes `_relevance` will make with `plan.work` (exact)."""
    Extractive(resources=resources).plan_relevance(plan, query, passages, [sentence_spans(p.text) for p in passages])


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
