"""SQuAD-style answer normalisation and scores (exact match, token F1, `contained`).

Pure functions shared by the benchmarks (benchmarks/qa_metrics.py re-exports them) and the evaluation
jobs (apps.evaluations): one definition, so a job scores answers exactly as the benchmarks do.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: list[str]) -> float:
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        same = sum(common.values())
        if same == 0 or not pred_tokens or not gold_tokens:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contained(text: str, answers: list[str]) -> float:
    """The normalised gold answer appears in the normalised text (small models answer in sentences)."""
    haystack = f" {normalize_answer(text)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in haystack for a in answers))
