"""`extractive_answer`: the answer is the best sentence(s) of the retrieved passages, quoted with its citation.

No model generates anything: every sentence of every passage is scored against the question and the
best one (or ``sentences`` of them) is returned as it stands, followed by the ``[n]`` of its passage.
The only model work is one metered encode with the packaged MiniLM (the question and every sentence),
so an answer costs the retrieval plus those embeddings, against the naive pipeline's whole generation.

Score of sentence s of passage p (rank r in the retrieval order, 0 first):

    semantic_weight · cos(q, "title. s") + passage_weight · cos(q, mean of p's sentence vectors)
      + lexical_weight · overlap(q, s) + answer_type_weight · type(q, s) + rank_weight · (−log2(1 + r))

overlap: the share of the question's content-word IDF mass the sentence holds (IDF over the candidate
sentences); type: 1 when the question's wh-phrase expects a date / number / name and the sentence holds
one (``workers.runtime.text``). Sentences shorter than ``min_words`` words are candidates only when no
other is. Ties go to the earlier sentence in retrieval order. ``score_reference`` is the same score
computed with plain Python loops (the test oracle of ``score_sentences``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workers.prompting.base import Passage
from workers.prompting.naive import NaivePrompting
from workers.runtime.text import (
    Span,
    answer_type_match,
    expected_answer_type,
    lexical_overlap,
    query_keywords,
    rank_prior,
    sentence_spans,
    word_core,
)

EncodeFn = Callable[[list[str]], np.ndarray]  # texts -> (N, D) float32, L2-normalised (metered by the caller)

FINISH_REASON = "extractive"  # a run answered by extraction: nothing was generated


@dataclass(frozen=True)
class ExtractiveAnswerConfig:
    """The options of ``extractive_answer`` (a pipeline's ``prompting_options``)."""

    sentences: int = 1  # sentences quoted in the answer, best first
    semantic_weight: float = 1.0
    passage_weight: float = 0.3
    lexical_weight: float = 0.3
    answer_type_weight: float = 0.2
    rank_weight: float = 0.1
    title_context: bool = True  # embed "title. sentence" (a pronoun-led sentence then still names its entity)
    min_words: int = 4  # shorter sentences ("Notes.", "See also.") only when nothing else is there

    def __post_init__(self) -> None:
        # Pipelines build this from user-supplied JSON: refuse bad values when they are saved.
        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        checks = [
            (isinstance(self.sentences, int) and not isinstance(self.sentences, bool) and 1 <= self.sentences <= 5,
             "sentences must be an integer from 1 to 5"),
            (isinstance(self.min_words, int) and not isinstance(self.min_words, bool) and 0 <= self.min_words <= 50,
             "min_words must be an integer from 0 to 50"),
            (isinstance(self.title_context, bool), "title_context must be true or false"),
        ]
        for label in ("semantic_weight", "passage_weight", "lexical_weight", "answer_type_weight", "rank_weight"):
            value = getattr(self, label)
            checks.append((number(value) and value >= 0, f"{label} must be a number >= 0"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Candidate:
    """One sentence of one passage: ``passage`` indexes the passages (cited as ``[passage + 1]``)."""

    passage: int
    span: Span  # character offsets into the passage's text
    text: str
    words: int


@dataclass(frozen=True)
class ExtractedSentence:
    passage: int
    span: Span
    text: str
    score: float


@dataclass
class ExtractiveResult:
    """What the strategy answers: the quoted text with its markers, and which sentences it took."""

    text: str
    sentences: list[ExtractedSentence]
    embedded_texts: int  # texts the encode call read (the question and every candidate)
    finish_reason: str = FINISH_REASON


def candidates(passages: Sequence[Passage]) -> list[Candidate]:
    """Every sentence of every passage, in retrieval order then text order."""
    out: list[Candidate] = []
    for i, passage in enumerate(passages):
        for a, b in sentence_spans(passage.text):
            text = passage.text[a:b]
            out.append(Candidate(i, (a, b), text, sum(1 for w in text.split() if word_core(w))))
    return out


def score_sentences(
    question: str,
    passages: Sequence[Passage],
    cands: Sequence[Candidate],
    vectors: np.ndarray,  # (S, D) the candidates' (embedded) vectors, L2-normalised
    query: np.ndarray,  # (D,)
    config: ExtractiveAnswerConfig,
) -> np.ndarray:
    """(S,) every candidate's score (see the module docstring), vectorised."""
    n = len(cands)
    if n == 0:
        return np.zeros(0)
    assert vectors.shape[0] == n, "one vector per candidate"
    owner = np.array([c.passage for c in cands], dtype=np.int64)  # (S,)
    cos = (vectors @ query).astype(np.float64)  # (S,)
    score = config.semantic_weight * cos
    if config.passage_weight:
        for p in np.unique(owner):
            rows = owner == p
            mean = vectors[rows].mean(axis=0)  # (D,)
            mean = mean / (np.linalg.norm(mean) or 1.0)
            score[rows] += config.passage_weight * float(mean @ query)
    if config.lexical_weight:
        score += config.lexical_weight * lexical_overlap(question, [c.text for c in cands])
    if config.answer_type_weight:
        score += config.answer_type_weight * answer_type_match(question, [c.text for c in cands])
    if config.rank_weight:
        per_passage = [int((owner == p).sum()) for p in range(len(passages))]
        score += config.rank_weight * rank_prior(per_passage)
    return score


def score_reference(
    question: str,
    passages: Sequence[Passage],
    cands: Sequence[Candidate],
    vectors: Sequence[Sequence[float]],
    query: Sequence[float],
    config: ExtractiveAnswerConfig,
) -> list[float]:
    """The same score as ``score_sentences``, one sentence at a time with plain Python (the test oracle)."""
    def dot(a: Sequence[float], b: Sequence[float]) -> float:
        return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))

    terms = sorted(query_keywords(question))
    bags = [{word_core(w).lower() for w in c.text.split()} for c in cands]
    idf = {t: math.log((len(bags) + 1) / (sum(t in bag for bag in bags) + 0.5)) for t in terms}
    kind = expected_answer_type(question)
    out = []
    for i, cand in enumerate(cands):
        total = config.semantic_weight * dot(vectors[i], query)
        members = [vectors[j] for j, other in enumerate(cands) if other.passage == cand.passage]
        mean = [sum(float(v[d]) for v in members) / len(members) for d in range(len(query))]
        norm = math.sqrt(sum(x * x for x in mean)) or 1.0
        total += config.passage_weight * dot([x / norm for x in mean], query)
        if terms:
            total += config.lexical_weight * sum(idf[t] for t in terms if t in bags[i]) / sum(idf.values())
        if kind is not None:
            total += config.answer_type_weight * float(answer_type_match(question, [cand.text])[0])
        total += config.rank_weight * -math.log2(1 + cand.passage)
        out.append(total)
    return out


def choose(scores: np.ndarray, cands: Sequence[Candidate], k: int, min_words: int) -> list[int]:
    """The ``k`` best candidates (indices), best first; short ones only when too few others exist; ties to
    the earlier candidate."""
    order = sorted(range(len(cands)), key=lambda i: (-float(scores[i]), i))
    full = [i for i in order if cands[i].words >= min_words]
    short = [i for i in order if cands[i].words < min_words]
    return (full + short)[:k]


def quote(passages: Sequence[Passage], cands: Sequence[Candidate], chosen: Sequence[int]) -> str:
    """The answer text: each chosen sentence followed by its passage's ``[n]``, best first."""
    return " ".join(f"{cands[i].text} [{cands[i].passage + 1}]" for i in chosen)


class ExtractiveAnswerPrompting:
    """The answer is the best sentence(s) of the retrieved passages, with its citation; nothing is generated."""

    name = "extractive_answer"
    runs_model = False
    extractive = True  # the pipeline answers with ``answer()`` and never calls the generator
    config_class = ExtractiveAnswerConfig

    def __init__(self, config: ExtractiveAnswerConfig | None = None) -> None:
        self.config = config or ExtractiveAnswerConfig()

    def build_messages(self, *, system_prompt: str, question: str, passages: list[Passage]) -> list[dict]:
        """The naive prompt (estimates and the baseline: what a generator would have been sent)."""
        return NaivePrompting().build_messages(system_prompt=system_prompt, question=question, passages=passages)

    def embedding_inputs(self, question: str, passages: Sequence[Passage]) -> list[str]:
        """Exactly the texts ``answer`` encodes, in its one encode call: the question, then every candidate
        (with its passage's title when ``title_context``). The caller bounds the embedding's cost on them."""
        return [question, *(self._sentence_input(passages[c.passage], c) for c in candidates(passages))]

    def _sentence_input(self, passage: Passage, cand: Candidate) -> str:
        return f"{passage.title}. {cand.text}" if self.config.title_context and passage.title else cand.text

    def answer(self, *, question: str, passages: Sequence[Passage], encode: EncodeFn) -> ExtractiveResult:
        """Score every sentence (one ``encode`` call over ``embedding_inputs``) and quote the best."""
        cands = candidates(passages)
        if not cands:
            return ExtractiveResult(text="", sentences=[], embedded_texts=0)
        texts = [question, *(self._sentence_input(passages[c.passage], c) for c in cands)]
        vectors = np.asarray(encode(texts), dtype=np.float32)  # (1 + S, D)
        assert vectors.shape[0] == len(texts), "the encoder returns one vector per text"
        scores = score_sentences(question, passages, cands, vectors[1:], vectors[0], self.config)
        chosen = choose(scores, cands, self.config.sentences, self.config.min_words)
        return ExtractiveResult(
            text=quote(passages, cands, chosen),
            sentences=[ExtractedSentence(cands[i].passage, cands[i].span, cands[i].text, float(scores[i]))
                       for i in chosen],
            embedded_texts=len(texts),
        )


__all__ = [
    "FINISH_REASON",
    "Candidate",
    "ExtractiveAnswerConfig",
    "ExtractiveAnswerPrompting",
    "ExtractiveResult",
    "candidates",
    "choose",
    "score_reference",
    "score_sentences",
]
