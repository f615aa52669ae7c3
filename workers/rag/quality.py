"""Per-answer quality signals, computed cheaply after generation (plain data, no Django).

- **Citation validity** (``clean_citations``): markers ``[n]`` that point past the sources the prompt
  numbered are removed from the answer and counted.
- **Support** (``sentence_scores``): each answer sentence is scored against the passages it cites (or,
  when it cites none, every retrieved passage): ``Thresholds.cosine_weight`` x the MiniLM cosine
  between the sentence and the passage (clipped at 0) plus the rest x the share of the sentence's
  content words *not in the question* found in the passage (restating the question is not support),
  times ``Thresholds.rank_decay`` per retrieval rank below the first (support by a passage the
  retriever found less relevant to the question is weaker evidence), best passage taken. ``support``
  is the share of sentences scoring at least ``Thresholds.sentence``; ``support_score`` their mean
  weighted 1, 1/2, 1/3, ... by position (the opening sentence carries the answer; later ones are
  often continuation cut by the token cap) is the ``evidence``; ``support_score`` combines it with the
  answer's fit to its question's form (``question_fit``) in a logistic model with fixed coefficients
  (``SCORE_MODEL``, fitted on the design questions): threshold-free, what the benchmark's AUROC ranks.
- **Model confidence**: the generated tokens' log-probabilities (recorded in the decode loop), their mean
  and least; stored, weight 0 in the score (they did not predict correctness on both design datasets).
- **Retrieval confidence** (``retrieval_confidence``): the best hit's score as a percentile of the
  best-hit scores of the same pipeline's earlier runs (its corpus's score distribution); None until
  there are ``MIN_REFERENCE`` of them. A pipeline may abstain below a threshold (``ABSTAIN_ANSWER``).
- **Label** (``quality_label``): ``abstained`` (answered "not found" without generating),
  ``degenerate`` (stopped by the degeneration guard, empty, or with no content word to assess:
  "The answer is:"), else by support: ``grounded``
  (support >= ``Thresholds.grounded``), ``weak`` (>= ``Thresholds.weak``), ``unsupported``; a support score
  below ``Thresholds.score_grounded`` / ``score_weak`` (default 0: off) lowers it.

Thresholds were calibrated on the first half of the rag_qa questions (docs/quality.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

GROUNDED, WEAK, UNSUPPORTED, DEGENERATE, ABSTAINED = "grounded", "weak", "unsupported", "degenerate", "abstained"
LABELS = (GROUNDED, WEAK, UNSUPPORTED, DEGENERATE, ABSTAINED)
ABSTAIN_ANSWER = "Not found in the documents."
ABSTAIN_FINISH_REASON = "abstained"
LOGPROB_FLOOR = -100.0  # a token's log-probability is counted at least this (a masked token's is -inf)
MIN_REFERENCE = 5  # earlier best-hit scores needed before a retrieval confidence is given

Embed = Callable[[list[str]], Any]  # texts -> vectors (N, D), L2-normalised; None when refused

_MARKER = re.compile(r"\s?\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her his i if in into
    is it its may me my of on or our she so than that the their them then there these they this to
    was we were what when where which who whom whose why will with would you your answer question passage
    passages document documents based according""".split()
)


@dataclass(frozen=True)
class Thresholds:
    """How a sentence is scored and where it counts as supported, and the support shares of the labels."""

    # Calibrated on the design questions (rag_qa, NQ 1-40 and HotpotQA 1-30: the Youden-optimal cut of
    # the support score predicting `contained`); docs/quality.md.
    sentence: float = 0.45
    grounded: float = 0.75
    weak: float = 0.25
    cosine_weight: float = 0.5  # of a sentence's score; the rest is token overlap
    rank_decay: float = 0.8  # a passage's support is worth this much less per retrieval rank below the first
    # Support score (``ScoreModel``) cuts: below ``score_grounded`` an answer is at most weak, below
    # ``score_weak`` unsupported.
    score_grounded: float = 0.0
    score_weak: float = 0.0


@dataclass
class Quality:
    """An answer's quality signals, as stored on its run."""

    label: str
    support: float | None = None  # share of sentences supported (None: nothing to assess)
    support_score: float | None = None  # the chance the answer is right, in [0, 1] (``ScoreModel``)
    evidence: float | None = None  # the sentences' position-weighted mean support score
    question_fit: float | None = None  # 1 / 0: the answer has / lacks the form its question asks for
    retrieval_confidence: float | None = None  # percentile of the best hit among earlier runs'
    citations_removed: int = 0
    embedded: bool = False  # the cosine part was computed (else token overlap alone)
    # The model's own confidence: the mean and the least log-probability of its generated tokens (a local
    # model's; None when unknown: a remote endpoint, an extractive answer).
    answer_logprob_mean: float | None = None
    answer_logprob_min: float | None = None
    token_logprobs: list[float] = field(default_factory=list)  # per generated token, rounded
    # The contrastive grounding signal (workers.rag.grounding; None: not computed): the answer's mean token
    # log-probability after the question-only prompt, and the generation's mean less it.
    question_only_logprob_mean: float | None = None
    grounding_gain: float | None = None
    span: float | None = None  # 1 / 0: the short answer is / is not found whole in a passage
    entity_overlap: float | None = None  # share of the answer's entities its question names
    sentences: list[dict[str, Any]] = field(default_factory=list)  # {"text", "score", "passage"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_citations(answer: str, sources: int) -> tuple[str, int]:
    """``answer`` without the citation markers past ``sources`` (numbers outside 1..sources), and how many
    numbers were removed. ``[2, 7]`` with 5 sources becomes ``[2]``; ``[6]`` goes with the space before it."""
    removed = 0

    def keep(match: re.Match[str]) -> str:
        nonlocal removed
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= sources]
        removed += len(numbers) - len(valid)
        if len(valid) == len(numbers):
            return match.group(0)
        if not valid:
            return ""
        lead = " " if match.group(0).startswith(" ") else ""
        return f"{lead}[{', '.join(str(n) for n in valid)}]"

    return _MARKER.sub(keep, answer), removed


def cited_numbers(text: str) -> list[int]:
    """The source numbers ``text`` cites, in order, without repeats."""
    found: list[int] = []
    for match in _MARKER.finditer(text):
        for n in re.split(r"\s*[,;]\s*", match.group(1)):
            if int(n) not in found:
                found.append(int(n))
    return found


def split_sentences(text: str) -> list[str]:
    """The answer's sentences (on . ! ? and line breaks), empty ones dropped."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_tokens(text: str) -> set[str]:
    """Lowercased words of ``text`` less stopwords and bare citation numbers, plural -s stripped."""
    text = _MARKER.sub(" ", text)
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def token_overlap(sentence: str, passage: str, question: str = "") -> float:
    """Share of the sentence's content words that are not the question's found in the passage (0 when it
    has none: a sentence that only restates the question is supported by nothing)."""
    words = content_tokens(sentence) - content_tokens(question)
    if not words:
        return 0.0
    return len(words & content_tokens(passage)) / len(words)


def combine(cosine: float | None, overlap: float, weight: float, rank: int = 1, decay: float = 1.0) -> float:
    """A sentence's score against the passage at retrieval ``rank`` (1-based): ``weight`` x the cosine
    (clipped at 0; overlap alone when there is none) + the rest x overlap, times ``decay`` per rank below
    the first."""
    value = overlap if cosine is None else weight * max(cosine, 0.0) + (1 - weight) * overlap
    return value * decay ** (rank - 1)


def rescore(sentence: dict[str, Any], weight: float, decay: float) -> float:
    """A stored sentence's score with another cosine weight and rank decay (from its per-passage
    ``cosines`` and ``overlaps``)."""
    overlaps = sentence.get("overlaps") or []
    if not overlaps:
        return float(sentence["score"])
    cosines = sentence.get("cosines") or [None] * len(overlaps)
    return max(combine(c, o, weight, n, decay)
               for n, c, o in zip(sentence["candidates"], cosines, overlaps, strict=True))


def position_mean(scores: Sequence[float]) -> float | None:
    """The mean of sentence scores weighted 1, 1/2, 1/3, ... by position; None for none."""
    if not scores:
        return None
    weights = [1 / (i + 1) for i in range(len(scores))]
    return sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights)


def _cosines(embed: Embed | None, sentences: list[str], passages: Sequence[str]) -> list[list[float]] | None:
    """(sentences x passages) cosine similarities, or None when there is no embedder or it refused."""
    if embed is None or not sentences or not passages:
        return None
    vectors = embed([*sentences, *passages])
    if vectors is None:
        return None
    rows = [list(map(float, v)) for v in vectors]
    assert len(rows) == len(sentences) + len(passages), "one vector per text"
    s_rows, p_rows = rows[: len(sentences)], rows[len(sentences):]

    def cos(a: list[float], b: list[float]) -> float:
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb) if na and nb else 0.0

    return [[cos(s, p) for p in p_rows] for s in s_rows]


def sentence_scores(
    answer: str, passages: Sequence[str], *, embed: Embed | None = None, question: str = "",
    cosine_weight: float = Thresholds.cosine_weight, rank_decay: float = 1.0,
) -> tuple[list[dict[str, Any]], bool]:
    """Each assessable answer sentence with its support score in [0, 1], the passage (1-based) that
    supports it best, and the cosines and overlaps against its candidate passages (``candidates``); a
    sentence citing valid passages is scored against those only. Returns (sentences, whether cosines
    were used). Sentences with no content word are not assessed."""
    sentences = [s for s in split_sentences(answer) if content_tokens(s)]
    if not sentences or not passages:
        return [{"text": s[:200], "score": 0.0, "passage": None} for s in sentences], False
    cosines = _cosines(embed, [_MARKER.sub("", s) for s in sentences], passages)
    scored = []
    for i, sentence in enumerate(sentences):
        cited = [n for n in cited_numbers(sentence) if 1 <= n <= len(passages)]
        candidates = cited or list(range(1, len(passages) + 1))
        overlaps = [round(token_overlap(sentence, passages[n - 1], question), 4) for n in candidates]
        row_cosines = None if cosines is None else [round(cosines[i][n - 1], 4) for n in candidates]
        values = [
            combine(None if row_cosines is None else row_cosines[k], overlaps[k], cosine_weight, n, rank_decay)
            for k, n in enumerate(candidates)
        ]
        best = max(range(len(candidates)), key=lambda k: values[k])
        scored.append({
            "text": sentence[:200], "score": round(min(max(values[best], 0.0), 1.0), 4),
            "passage": candidates[best], "candidates": candidates, "cosines": row_cosines, "overlaps": overlaps,
        })
    return scored, cosines is not None


_YES_NO_QUESTION = re.compile(
    r"^\W*(?:is|are|was|were|am|do|does|did|can|could|has|have|had|will|would|should|shall|may|might|must)\b", re.I
)
_YES_NO_ANSWER = re.compile(r"^\W*(?:yes|no)\b", re.I)
_CHOICE = re.compile(r",\s*([^,?]+?)\s+or\s+([^,?]+?)\s*\?\s*$", re.I)  # "..., A or B?"
_BARE_CHOICE = re.compile(r"(\w+)\s+or\s+(\w+)", re.I)  # "north or south"


def question_fit(question: str, answer: str) -> float | None:
    """Whether the answer has the form its question asks for: 1.0 or 0.0, None for a question of no
    recognised form. A choice question (``..., A or B?``, else ``a or b`` inside it) is fitted by an
    answer naming the distinctive words of an option (one or both: weighing them is still an answer); a
    yes/no question (opening with an auxiliary verb, no choice) by an answer opening with yes or no."""
    question, answer = question.strip(), _MARKER.sub(" ", answer)
    choice = _CHOICE.search(question) or _BARE_CHOICE.search(question)
    if choice:
        first, second = content_tokens(choice.group(1)), content_tokens(choice.group(2))
        words = content_tokens(answer)
        if (first - second) and (second - first):
            return 1.0 if (first - second) & words or (second - first) & words else 0.0
        return None
    if _YES_NO_QUESTION.match(question):
        return 1.0 if _YES_NO_ANSWER.match(answer) else 0.0
    return None


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_ENTITY = re.compile(r"\b(?:[A-Z][\w'-]*|\d[\d,.]*)")


def normalize_text(text: str) -> str:
    """SQuAD's answer normalisation: lowercased, citation markers, punctuation and articles dropped,
    whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", _MARKER.sub(" ", text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


_ANSWER_IS = re.compile(r"^\W*(?:the\s+)?(?:short\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?\s+is\s*:?\s*",
                        re.I)
_COPULA = re.compile(r"\s(?:is|are|was|were)\s+", re.I)


def short_answer(answer: str, max_words: int = 8) -> tuple[int, int] | None:
    """The (start, end) characters of the answer's short answer, or None: its first line's first sentence
    less an "The answer is:" opening ("The answer is: 14." -> "14"), or the words after its last "is" /
    "was" / "are" / "were" ("The capital of France is Paris." -> "Paris"), the first of the two (the
    predicate first without such an opening) that is 1 to ``max_words`` words."""
    line = _MARKER.sub(lambda m: " " * len(m.group(0)), answer).split("\n")[0]
    sentences = split_sentences(line)
    if not sentences:
        return None
    start = line.index(sentences[0])
    end = start + len(sentences[0].rstrip(".!?"))
    opening = _ANSWER_IS.match(line[start:end])
    if opening:
        start += opening.end()
    candidates = [(start, end)]
    copulas = list(_COPULA.finditer(line, start, end))
    if copulas:  # after "The answer is:", what follows; else the predicate first
        candidates.insert(len(candidates) if opening else 0, (copulas[-1].end(), end))
    for lo, hi in candidates:
        words = len(normalize_text(line[lo:hi]).split())
        if 1 <= words <= max_words:
            while line[hi - 1:hi].isspace():
                hi -= 1
            return lo, hi
    return None


def span_in_passages(answer: str, passages: Sequence[str], max_words: int = 8) -> float:
    """1.0 when the answer's short answer (``short_answer``) is found whole, normalised and on word
    boundaries, in a normalised passage; else 0.0. A short answer copied from a passage names something
    the passages say."""
    found = short_answer(answer, max_words)
    span = normalize_text(answer[found[0]:found[1]]) if found else ""
    if not span:
        return 0.0
    needle = f" {span} "
    return 1.0 if any(needle in f" {normalize_text(p)} " for p in passages) else 0.0


def entities(text: str) -> set[str]:
    """Capitalised words and numbers of ``text`` (a cheap stand-in for named entities), lowercased, less
    stopwords ("The", "It") and citation markers."""
    text = _MARKER.sub(" ", text)
    return {w.lower().rstrip(".,") for w in _ENTITY.findall(text) if w.lower() not in STOPWORDS}


def question_entity_overlap(question: str, answer: str) -> float:
    """Share of the entities of the answer's first sentence that its question names (0 when it names none):
    an answer made of the question's own names restates it instead of answering."""
    sentences = split_sentences(answer)
    found = entities(sentences[0]) if sentences else set()
    if not found:
        return 0.0
    asked = {_stem(w) for w in _WORD.findall(question.lower())}
    return len({e for e in found if _stem(e) in asked or e in question.lower()}) / len(found)


@dataclass(frozen=True)
class ScoreModel:
    """The support score: a logistic model over an answer's signals, ``sigmoid(intercept + sum(weight x
    signal))``, read as the chance that the answer is right. Coefficients fitted on the design questions
    (``benchmarks/quality_fit.py``; docs/quality.md "Calibration") and shipped as constants."""

    intercept: float = 0.0
    evidence: float = 1.0  # x the evidence score (position-weighted sentence support, 0..1)
    logprob: float = 0.0  # x the answer's mean token log-probability (<= 0)
    misfit: float = 0.0  # x 1 when the answer does not have the form its question asks for (else 0)
    grounding: float = 0.0  # x the grounding gain (mean log-probability with the passages less without)
    span: float = 0.0  # x 1 when the short answer is found whole in a passage (``span_in_passages``)
    entity_overlap: float = 0.0  # x the share of the answer's entities its question names
    words: float = 0.0  # x the answer's length in words
    # The mean token log-probability assumed when the model's is unknown (a remote endpoint): the design
    # answers' median, so the score then rests on the other signals.
    logprob_default: float = -1.0
    # The grounding gain assumed when it is unknown (a remote endpoint, the option off): the design answers'
    # median.
    grounding_default: float = 0.0

    def score(self, *, evidence: float, logprob_mean: float | None, fit: float | None,
              grounding_gain: float | None = None, span: float = 0.0, entity_overlap: float = 0.0,
              words: float = 0.0) -> float:
        logprob = self.logprob_default if logprob_mean is None else logprob_mean
        gain = self.grounding_default if grounding_gain is None else grounding_gain
        z = (self.intercept + self.evidence * evidence + self.logprob * logprob + self.misfit * (fit == 0.0)
             + self.grounding * gain + self.span * span + self.entity_overlap * entity_overlap
             + self.words * words)
        return 1 / (1 + math.exp(-z))

    def uses_grounding(self) -> bool:
        return self.grounding != 0.0


# Fitted on the first design set (rag_qa, NQ 1-40 and HotpotQA 1-30; `benchmarks/quality_fit.py --c 10`): the
# evidence and the question-form misfit. A refit on the larger design split (NQ 1-80, HotpotQA 1-30) over the
# candidate signals chose evidence + misfit + the mean token log-probability (weight -0.964) and ranked the
# report split's answers worse than these weights (NQ 0.735 vs 0.763, HotpotQA 0.584 vs 0.640), so it was not
# adopted; the grounding gain, span presence, entity overlap and length got no weight (docs/quality.md
# "Calibration").
SCORE_MODEL = ScoreModel(intercept=-1.875, evidence=1.326, logprob=0.0, misfit=-1.256, logprob_default=-0.582)


def answer_signals(
    *, question: str, answer: str, sentences: Sequence[dict[str, Any]], token_logprobs: Sequence[float] | None,
    passages: Sequence[str] = (), question_only_logprobs: Sequence[float] | None = None,
) -> dict[str, float | None]:
    """What the support score may combine (``ScoreModel``): ``evidence``, the scored sentences' mean weighted
    1, 1/2, 1/3, ... by position (0 for none); ``logprob_mean``, the model's mean token log-probability
    (None: unknown); ``fit``, ``question_fit``; ``grounding_gain``, the mean log-probability with the passages
    less without them (``question_only_logprobs``: the answer scored after the question alone; None:
    unknown); ``span``, ``span_in_passages``; ``entity_overlap``, ``question_entity_overlap``; ``words``, the
    answer's length in words."""
    clipped = logprob_fields(token_logprobs)["token_logprobs"]
    alone = logprob_fields(question_only_logprobs)["token_logprobs"]
    return {
        "evidence": position_mean([float(s["score"]) for s in sentences]) or 0.0,
        "logprob_mean": sum(clipped) / len(clipped) if clipped else None,
        "fit": question_fit(question, answer),
        "grounding_gain": sum(clipped) / len(clipped) - sum(alone) / len(alone) if clipped and alone else None,
        "span": span_in_passages(answer, passages),
        "entity_overlap": question_entity_overlap(question, answer),
        "words": float(len(_MARKER.sub(" ", answer).split())),
    }


def support_share(scores: Sequence[float], threshold: float) -> float | None:
    """Share of sentence scores at or above ``threshold``; None for no sentence."""
    return sum(score >= threshold for score in scores) / len(scores) if scores else None


def quality_label(
    *, finish_reason: str, answer: str, support: float | None, thresholds: Thresholds = Thresholds(),
    score: float | None = None,
) -> str:
    """The run's label from its finish reason, support share and support score (see the module's
    docstring): the share gives grounded / weak / unsupported, and a support ``score`` below
    ``thresholds.score_grounded`` (``score_weak``) lowers it to at most weak (to unsupported)."""
    if finish_reason == ABSTAIN_FINISH_REASON:
        return ABSTAINED
    if finish_reason == "repetition" or not answer.strip() or support is None:
        return DEGENERATE  # a loop, nothing, or nothing to assess ("The answer is:")
    if score is not None and score < thresholds.score_weak:
        return UNSUPPORTED
    if support >= thresholds.grounded and (score is None or score >= thresholds.score_grounded):
        return GROUNDED
    if support >= thresholds.weak:
        return WEAK
    return UNSUPPORTED


def best_hit_score(hits: Sequence[tuple[float, dict[str, Any]]]) -> float | None:
    """The best hit's score on a scale comparable across runs: its dense cosine when any hit has one (a
    hybrid's fused score is rank-based, nearly constant at the top), else its own score. ``hits``:
    (score, {retriever: (rank, score)}) pairs."""
    if not hits:
        return None
    dense = [float(retrievers["dense"][1]) for _, retrievers in hits if "dense" in (retrievers or {})]
    return max(dense) if dense else max(float(score) for score, _ in hits)


def retrieval_confidence(best: float | None, reference: Sequence[float]) -> float | None:
    """The percentile (0..1, ties counting half) of ``best`` among ``reference`` (earlier runs' best-hit
    scores on the same pipeline); None without a best hit or with fewer than ``MIN_REFERENCE`` scores."""
    if best is None or len(reference) < MIN_REFERENCE:
        return None
    below = sum(score < best for score in reference)
    tied = sum(score == best for score in reference)
    return round((below + 0.5 * tied) / len(reference), 4)


def should_abstain(confidence: float | None, abstain_below: float | None) -> bool:
    """Whether a pipeline abstaining below ``abstain_below`` does so at ``confidence`` (never when unknown)."""
    return abstain_below is not None and confidence is not None and confidence < abstain_below


def assess(
    *,
    answer: str,
    finish_reason: str,
    passages: Sequence[str],
    embed: Embed | None = None,
    question: str = "",
    retrieval_confidence: float | None = None,
    thresholds: Thresholds = Thresholds(),
    token_logprobs: Sequence[float] | None = None,
    score_model: ScoreModel | None = None,
    question_only: Callable[[str], Sequence[float] | None] | None = None,
) -> tuple[str, Quality]:
    """(the answer with invalid citation markers removed, its quality). ``passages``: the retrieved texts,
    numbered from 1 as the prompt numbers them; ``question``'s words are not support; ``token_logprobs``: the
    generated tokens' log-probabilities (None: unknown); ``score_model``: default ``SCORE_MODEL``;
    ``question_only``: the cleaned answer -> its tokens' log-probabilities after the question-only prompt
    (``workers.rag.grounding``, metered by the caller; None back: unknown), called once for an assessable
    answer with known ``token_logprobs``."""
    score_model = score_model or SCORE_MODEL
    if finish_reason == ABSTAIN_FINISH_REASON:
        return answer, Quality(label=ABSTAINED, retrieval_confidence=retrieval_confidence)
    cleaned, removed = clean_citations(answer, len(passages))
    degenerate = finish_reason == "repetition" or not cleaned.strip()
    sentences, embedded = ([], False) if degenerate else sentence_scores(
        cleaned, passages, embed=embed, question=question, cosine_weight=thresholds.cosine_weight,
        rank_decay=thresholds.rank_decay,
    )
    scores = [s["score"] for s in sentences]
    support = support_share(scores, thresholds.sentence)
    alone = question_only(cleaned) if question_only is not None and scores and token_logprobs else None
    signals = answer_signals(question=question, answer=cleaned, sentences=sentences, token_logprobs=token_logprobs,
                             passages=passages, question_only_logprobs=alone)
    score = None
    if scores:
        score = round(score_model.score(
            evidence=signals["evidence"] or 0.0, logprob_mean=signals["logprob_mean"], fit=signals["fit"],
            grounding_gain=signals["grounding_gain"], span=signals["span"] or 0.0,
            entity_overlap=signals["entity_overlap"] or 0.0, words=signals["words"] or 0.0,
        ), 4)
    elif degenerate:
        score = 0.0
    return cleaned, Quality(
        label=quality_label(finish_reason=finish_reason, answer=cleaned, support=support, thresholds=thresholds,
                            score=score),
        support=None if support is None else round(support, 4),
        support_score=score,
        evidence=round(signals["evidence"] or 0.0, 4) if scores else None,
        question_fit=signals["fit"] if not degenerate else None,
        retrieval_confidence=retrieval_confidence,
        citations_removed=removed,
        embedded=embedded,
        sentences=sentences,
        grounding_gain=None if signals["grounding_gain"] is None else round(signals["grounding_gain"], 4),
        question_only_logprob_mean=logprob_fields(alone)["answer_logprob_mean"],
        span=signals["span"] if scores else None,
        entity_overlap=None if not scores else round(signals["entity_overlap"] or 0.0, 4),
        **logprob_fields(token_logprobs),
    )


def logprob_fields(token_logprobs: Sequence[float] | None) -> dict[str, Any]:
    """``answer_logprob_mean``, ``answer_logprob_min`` and the rounded ``token_logprobs`` of a generation
    (None, None, [] when none are known); each is clipped to [-100, 0] (a masked token's -inf counts -100)."""
    values = [LOGPROB_FLOOR if math.isnan(v) else min(max(float(v), LOGPROB_FLOOR), 0.0) for v in token_logprobs or []]
    if not values:
        return {"answer_logprob_mean": None, "answer_logprob_min": None, "token_logprobs": []}
    return {
        "answer_logprob_mean": round(sum(values) / len(values), 4),
        "answer_logprob_min": round(min(values), 4),
        "token_logprobs": [round(v, 3) for v in values],
    }


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` ranking the positives first (Mann-Whitney U over average
    ranks, ties counting half); None when either class is empty."""
    assert len(scores) == len(positives), "one label per score"
    n_pos = sum(bool(p) for p in positives)
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # average 1-based rank of the tie group
        i = j + 1
    rank_sum = sum(rank for rank, p in zip(ranks, positives, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def calibrate_threshold(
    scores: Sequence[float], positives: Sequence[bool], candidates: Sequence[float] | None = None
) -> float:
    """The cut (score >= cut predicts positive) with the best Youden J (TPR - FPR) on these examples;
    ties go to the lower cut. Candidates default to the distinct scores."""
    n_pos = sum(bool(p) for p in positives)
    n_neg = len(positives) - n_pos
    best_cut, best_j = Thresholds().sentence, -2.0
    for cut in sorted(set(candidates if candidates is not None else scores)):
        tp = sum(1 for s, p in zip(scores, positives, strict=True) if p and s >= cut)
        fp = sum(1 for s, p in zip(scores, positives, strict=True) if not p and s >= cut)
        j = (tp / n_pos if n_pos else 0.0) - (fp / n_neg if n_neg else 0.0)
        if j > best_j:
            best_cut, best_j = cut, j
    return float(best_cut)


__all__ = [
    "ABSTAINED",
    "ABSTAIN_ANSWER",
    "ABSTAIN_FINISH_REASON",
    "DEGENERATE",
    "GROUNDED",
    "LABELS",
    "Quality",
    "Thresholds",
    "UNSUPPORTED",
    "WEAK",
    "assess",
    "auroc",
    "best_hit_score",
    "calibrate_threshold",
    "clean_citations",
    "combine",
    "LOGPROB_FLOOR",
    "SCORE_MODEL",
    "ScoreModel",
    "answer_signals",
    "logprob_fields",
    "question_fit",
    "position_mean",
    "quality_label",
    "rescore",
    "span_in_passages",
    "short_answer",
    "question_entity_overlap",
    "normalize_text",
    "entities",
    "retrieval_confidence",
    "sentence_scores",
    "should_abstain",
    "support_share",
]
