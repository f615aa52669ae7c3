"""Plain-text helpers every compression method shares: spans, sentences, words, budgets, protection.

Everything works on character spans ``(start, end)`` into the original passage text, so a
method decides *which* spans survive and `render` builds the compressed text from them; the
same spans go into ``CompressedContext.kept_spans``. No models here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

# Sentences, words and stopwords live in the engine's shared text module (the extractive answer uses them too).
from workers.runtime.text import (
    _WORD,
    STOPWORDS,
    Span,
    query_keywords,
    sentence_spans,
    strip_span,
    word_core,
)

__all__ = ["STOPWORDS", "Span", "query_keywords", "sentence_spans", "strip_span", "word_core"]

def word_spans(text: str, within: Span | None = None) -> list[Span]:
    """Whitespace-separated words as spans (punctuation stays attached to its word)."""
    offset, end = within if within is not None else (0, len(text))
    return [(offset + m.start(), offset + m.end()) for m in _WORD.finditer(text[offset:end])]


def merge_spans(text: str, spans: Iterable[Span]) -> list[Span]:
    """Sort spans and merge the ones that touch or are separated only by whitespace."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and (start <= merged[-1][1] or not text[merged[-1][1] : start].strip()):
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def render(text: str, spans: Sequence[Span]) -> str:
    """The compressed text: kept spans in original order, joined by one space where text was cut."""
    return " ".join(text[s:e] for s, e in merge_spans(text, spans))


def token_budget(target: float, tokens_before: int) -> int:
    """Tokens the whole context may keep: target ≤ 1 is a share, > 1 an absolute budget."""
    if not target > 0:
        raise ValueError(f"compression target must be > 0, got {target}")
    if target <= 1:
        return int(round(target * tokens_before))
    return min(int(target), tokens_before)


def allocate(budget: int, sizes: Sequence[int]) -> list[int]:
    """Split `budget` over items proportionally to `sizes` (largest remainder), each ≤ its size."""
    total = sum(sizes)
    if total <= 0:
        return [0 for _ in sizes]
    budget = min(budget, total)
    exact = [budget * s / total for s in sizes]
    shares = [int(x) for x in exact]
    rest = budget - sum(shares)
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - shares[i], reverse=True)[:rest]:
        shares[i] += 1
    return shares


def allocate_weighted(budget: int, sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Split `budget` ∝ size × weight, no item above its size (water-filling), summing exactly
    (unless only zero-weight items could take the rest: they never get any).

    Items that would get more than their size are capped and their excess goes to the others in
    the same proportion, until everything fits; then rounded by largest remainder.
    """
    total = sum(sizes)
    budget = min(budget, total)
    exact = [0.0] * len(sizes)
    active = [i for i, (s, w) in enumerate(zip(sizes, weights, strict=True)) if s > 0 and w > 0]
    left = float(budget)
    while active and left > 1e-9:
        mass = sum(sizes[i] * weights[i] for i in active)
        capped = [i for i in active if left * sizes[i] * weights[i] / mass >= sizes[i] - exact[i]]
        if not capped:
            for i in active:
                exact[i] += left * sizes[i] * weights[i] / mass
            left = 0.0
            break
        for i in capped:
            left -= sizes[i] - exact[i]
            exact[i] = float(sizes[i])
        active = [i for i in active if i not in capped]
    shares = [min(int(x), n) for x, n in zip(exact, sizes, strict=True)]
    # What zero-weight items could not take stays unallocated (left over in the loop above).
    rest = int(round(sum(exact))) - sum(shares)
    order = sorted(
        (i for i in range(len(sizes)) if exact[i] > shares[i]),
        key=lambda i: exact[i] - shares[i],
        reverse=True,
    )
    for i in order[:rest]:
        shares[i] += 1
    return shares


def tokens_of(count_tokens: Callable[[str], int], texts: Iterable[str]) -> int:
    return sum(count_tokens(t) for t in texts)


# ---------------------------------------------------------------------------- protected spans

_NUMBER = re.compile(r"\d")
NUMBER_WORDS = frozenset(
    """two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
    thousand million billion trillion dozen""".split()
)

_OPENING_QUOTES = "\"“‘"  # not the ASCII apostrophe: "'s" and "'90s" start words too
_CONNECTORS = frozenset({"of", "the", "de", "and", "for", "la", "le", "von", "van", "del", "da"})


def is_number(word: str) -> bool:
    """A word with a digit, or a number word ("four", "twenty", "million"; not "one", a pronoun too)."""
    return bool(_NUMBER.search(word)) or word_core(word).lower() in NUMBER_WORDS


def flows_on(text: str, words: Sequence[Span], k: int) -> bool:
    """Word k continues word k - 1's phrase: only whitespace between them, no punctuation ending k - 1."""
    return not text[words[k - 1][1]:words[k][0]].strip() and text[words[k - 1][1] - 1].isalnum()


def protected_words(
    text: str, words: Sequence[Span], keywords: set[str], names: Sequence[str] = (), *, counted: bool = True
) -> list[bool]:
    """Which words must survive pruning: numbers and what they count, named entities, query words.

    Numbers: a word with a digit or a number word ("four", "million"; `NUMBER_WORDS`).

    Named entities are a heuristic, not NER: a run of capitalised words, except a capitalised
    function word ("The", "In", "He") that starts a sentence, unless it opens a quotation: a
    quoted capitalised phrase is a title ('"I Write Sins Not Tragedies" is a song', '"The
    Raven"'), and its first word is part of the name. A run also covers the small connectors
    inside it ("University *of* Oxford", "Lord *of the* Rings").

    `names` are phrases known to be names (a passage's title): where the text spells one out,
    with the same capitals, all of its words are protected, the sentence-initial function word
    of an unquoted title included ("*My* Summer Story, originally released as ..."). A
    disambiguation in brackets ("Coming Home for Christmas (2017 film)") is not part of the name.

    The content word right after a number, with only a space between, is what the number counts
    or dates ("the 15th *century*", "474 *million* tonnes", "70 *percent*"); a causal LM finds it
    predictable after the number, so it is protected with it (`counted=False`: not).
    """
    flags: list[bool] = []
    sentence_start = True
    for start, end in words:
        word = text[start:end]
        core = word_core(word)
        lower = core.lower()
        capitalised = bool(core) and core[0].isupper()
        opens_quote = word[:1] in _OPENING_QUOTES
        entity = capitalised and not (sentence_start and lower in STOPWORDS and not opens_quote)
        flags.append(is_number(word) or entity or lower in keywords)
        sentence_start = word.endswith((".", "!", "?", ":"))
    for k in range(1, len(words) if counted else 0):
        core = word_core(text[slice(*words[k])]).lower()
        if (is_number(text[slice(*words[k - 1])]) and flows_on(text, words, k)
                and core.isalpha() and core not in STOPWORDS):
            flags[k] = True
    for name in names:
        _protect_name(text, words, name, flags)
    # Connectors between two capitalised protected words belong to the entity.
    capital = [flags[i] and word_core(text[s:e])[:1].isupper() for i, (s, e) in enumerate(words)]
    i = 1
    while i < len(words) - 1:
        j = i
        while j < len(words) and not flags[j] and word_core(text[slice(*words[j])]).lower() in _CONNECTORS:
            j += 1
        if j > i and j < len(words) and capital[i - 1] and capital[j] and j - i <= 2:
            for k in range(i, j):
                flags[k] = True
        i = max(j, i + 1)
    return flags


_DISAMBIGUATION = re.compile(r"\s*\([^)]*\)\s*$")


def without_disambiguation(title: str) -> str:
    """A title without its bracketed disambiguation: "Coal Miner's Daughter (film)" -> "Coal Miner's Daughter"."""
    return _DISAMBIGUATION.sub("", title).strip()


def _protect_name(text: str, words: Sequence[Span], name: str, flags: list[bool]) -> None:
    """Protect every occurrence of the word sequence `name` (cores compared with their capitals)."""
    target = [c for c in (word_core(w) for w in without_disambiguation(name).split()) if c]
    if not target:
        return
    cores = [word_core(text[a:b]) for a, b in words]
    n = len(target)
    for k in range(len(words) - n + 1):
        if cores[k : k + n] == target:
            for j in range(k, k + n):
                flags[j] = True
