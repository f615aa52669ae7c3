"""Plain-text helpers the engine shares: sentences as character spans, words, stopwords, and the cheap
sentence signals of extractive selection (question-word overlap, expected answer type, retrieval rank).

Used by compression (``workers.compression.extractive``, pruning) and by the extractive answer
(``workers.prompting.extractive_answer``). No models here; numpy only.
"""

from __future__ import annotations

import re

import numpy as np

Span = tuple[int, int]

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) followed by
# whitespace and something that can start a sentence. Abbreviations are checked separately.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "inc", "ltd", "co",
    "corp", "no", "vol", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "gen", "col", "lt", "sgt", "capt", "rev", "gov", "sen", "rep", "e.g", "i.e", "u.s",
    "u.k", "a.m", "p.m", "approx", "est", "fig", "op",
}
_WORD = re.compile(r"\S+")
# Function words: never "entities" when capitalised at a sentence start, never query keywords.
STOPWORDS = frozenset(
    """a an the and or but if of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very
    can will just should now is are was were be been being have has had having do does did doing i me
    my we our you your he him his she her it its they them their what which who whom this that these
    those am as until while also would could may might must shall one many much""".split()
)


def sentence_spans(text: str) -> list[Span]:
    """Sentences of `text` as spans, leading/trailing whitespace excluded; never empty for non-blank text.

    A regex splitter (., !, ? before a capital, digit or opening quote), not a trained one:
    good enough for encyclopedic text, and it never loses characters between sentences.
    """
    spans: list[Span] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        # "Dr. Smith", "U.S. Army", "J. R. R. Tolkien": the word before the dot is an
        # abbreviation or a single initial, so this is not a boundary.
        word = text[start : match.start() + 1].split()[-1] if text[start : match.start() + 1].split() else ""
        stem = word.rstrip(".!?\"'”’)]").lstrip("\"'“‘([").lower()
        if text[match.start()] == "." and (stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha())):
            continue
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return [s for s in (strip_span(text, span) for span in spans) if s[1] > s[0]]


def strip_span(text: str, span: Span) -> Span:
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def word_core(word: str) -> str:
    """A word without surrounding punctuation (quotes, commas, brackets, possessive 's)."""
    core = word.strip("\"'“”‘’()[]{}.,;:!?")
    if core.endswith(("'s", "’s")):
        core = core[:-2]
    return core


def query_keywords(query: str) -> set[str]:
    """Lower-cased content words of the query (stopwords and 1-letter words dropped)."""
    words = {word_core(w).lower() for w in query.split()}
    return {w for w in words if len(w) > 1 and w not in STOPWORDS}


def rank_prior(sentences_per_passage: list[int]) -> np.ndarray:
    """(S,) the retrieval-rank prior of every sentence: -log2(1 + rank of its passage), rank 0 first.

    Passages reach a compression method in the retriever's order (best first, after fusion and
    reranking), and that order knows things one sentence's cosine does not (BM25 matches, the
    reranker's cross-attention, the passage as a whole): the DCG discount turns it into a score
    offset, 0 for the best passage, -1 for the second, -1.58 for the third, ...
    """
    ranks = np.repeat(np.arange(len(sentences_per_passage)), sentences_per_passage)  # (S,)
    return -np.log2(1.0 + ranks)


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


