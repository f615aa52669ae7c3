"""The answer cache's engine side: pure functions on plain data, no Django (``apps.answer_cache`` stores it).

- ``text``: the normalised question (exact hits), the facts two questions must agree on (numbers,
  capitalised names, negation) and the comparison of two answers (a missed lookup's label);
- ``threshold``: the per-entry decision whether a semantic hit at similarity s may be served under an
  error bound δ, learned from verified hits and misses (after vCache);
- ``eviction``: cost-aware eviction policies by name (lru, gdsf, lec) with a plain reference.
"""

from workers.rag.answer_cache.text import (
    answers_agree,
    facts_agree,
    question_facts,
    question_hash,
    question_normalise,
)
from workers.rag.answer_cache.threshold import Evidence, Observation, ThresholdConfig, error_bound, may_serve

__all__ = [
    "Evidence",
    "Observation",
    "ThresholdConfig",
    "answers_agree",
    "error_bound",
    "facts_agree",
    "may_serve",
    "question_facts",
    "question_hash",
    "question_normalise",
]
