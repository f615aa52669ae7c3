"""Questions and answers as the cache compares them.

``question_normalise``: case, Unicode form, punctuation and whitespace folded, so "Who wrote Hamlet?"
and "who wrote  hamlet" are one exact key. ``question_facts``: what two questions must share for one's
answer to serve the other — the numbers, the capitalised names (beyond the first word), and whether
the question is negated. GPTCache served the answer of the opposite question at cosine 0.83–0.9997
(its #694): embeddings barely see "not", "1998" vs "1999" or one name for another, so this check does.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)*)(?:st|nd|rd|th)?(?![\w])")
_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without",
                        "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "can't",
                        "cannot", "won't", "wouldn't", "shouldn't", "couldn't", "hasn't", "haven't", "hadn't",
                        "except", "least", "fewest", "smallest", "worst", "last", "earliest", "oldest",
                        "youngest", "latest", "before", "after", "first"})
_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "hundred": "100",
    "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th",
}
# Capitalised words that are no names: question words and sentence starters.
_STOP_CAPS = frozenset({
    "what", "who", "whom", "whose", "which", "when", "where", "why", "how", "is", "are", "was", "were", "do",
    "does", "did", "can", "could", "should", "would", "will", "the", "a", "an", "in", "on", "of", "i", "tell",
    "give", "list", "name", "find", "show", "please", "and", "or", "to", "for", "my", "me", "it",
})


def question_normalise(question: str) -> str:
    """Case- and punctuation-folded, whitespace-collapsed NFKC text: the exact-hit key's text."""
    text = unicodedata.normalize("NFKC", question).casefold()
    text = _PUNCT.sub(" ", text.replace("’", "'").replace("'", ""))
    return _SPACE.sub(" ", text).strip()


def question_hash(question: str) -> str:
    """sha256 hex of the normalised question."""
    return hashlib.sha256(question_normalise(question).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Facts:
    numbers: frozenset[str]
    names: frozenset[str]
    negations: frozenset[str]


def question_facts(question: str) -> Facts:
    """The numbers (digits and number words, "1,000" = "1000"), the capitalised names (not the first word
    of a sentence, not a question word) and the negations/polarity words of ``question``."""
    text = unicodedata.normalize("NFKC", question)
    numbers = {m.group(1).replace(",", "") for m in _NUMBER.finditer(text)}
    words = _WORD.findall(text)
    lowered = [w.casefold().replace("’", "'") for w in words]
    numbers |= {_NUMBER_WORDS[w] for w in lowered if w in _NUMBER_WORDS}
    names = set()
    sentence_start = True
    for token in re.findall(r"[^\W\d_][\w'’-]*|[.?!]", text):
        if token in ".?!":
            sentence_start = True
            continue
        if token[0].isupper() and not sentence_start and token.casefold() not in _STOP_CAPS:
            names.add(token.casefold())
        sentence_start = False
    negations = {w for w in lowered if w in _NEGATIONS or w.endswith("n't")}
    return Facts(numbers=frozenset(numbers), names=frozenset(names), negations=frozenset(negations))


def facts_agree(a: str, b: str) -> tuple[bool, str]:
    """(agree, why not): two questions agree when they name the same numbers, the same negations and
    polarity words, and neither names a capitalised name the other lacks (compared case-insensitively
    against all of the other's words, so "Paris" matches "paris")."""
    fa, fb = question_facts(a), question_facts(b)
    if fa.numbers != fb.numbers:
        return False, f"numbers differ: {sorted(fa.numbers)} vs {sorted(fb.numbers)}"
    if fa.negations != fb.negations:
        return False, f"negation/polarity differs: {sorted(fa.negations)} vs {sorted(fb.negations)}"
    words_a = set(question_normalise(a).split())
    words_b = set(question_normalise(b).split())
    missing = {n for n in fa.names if question_normalise(n) not in words_b} | {
        n for n in fb.names if question_normalise(n) not in words_a
    }
    if missing:
        return False, f"names differ: {sorted(missing)}"
    return True, ""


def _tokens(text: str) -> list[str]:
    return question_normalise(text).split()


def answers_agree(a: str, b: str, *, min_f1: float = 0.6) -> bool:
    """Whether two answers say the same: equal when normalised, one contains the other, or token F1 ≥
    ``min_f1`` — the label a missed lookup's fresh answer gives the cached candidate it was near."""
    na, nb = question_normalise(a), question_normalise(b)
    if not na or not nb:
        return False
    if na == nb or (len(na) >= 3 and na in nb) or (len(nb) >= 3 and nb in na):
        return True
    ta, tb = _tokens(a), _tokens(b)
    common: dict[str, int] = {}
    counts_b: dict[str, int] = {}
    for t in tb:
        counts_b[t] = counts_b.get(t, 0) + 1
    for t in ta:
        if counts_b.get(t, 0) > 0:
            counts_b[t] -= 1
            common[t] = common.get(t, 0) + 1
    same = sum(common.values())
    if same == 0:
        return False
    precision, recall = same / len(ta), same / len(tb)
    return 2 * precision * recall / (precision + recall) >= min_f1


__all__ = ["Facts", "answers_agree", "facts_agree", "question_facts", "question_hash", "question_normalise"]
