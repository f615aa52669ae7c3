"""SQuAD-style answer scores for the benchmarks: the engine's ``workers.rag.answer_metrics``, re-exported
(evaluation jobs score with the same functions)."""

from __future__ import annotations

from workers.rag.answer_metrics import contained, exact_match, f1_score, normalize_answer

__all__ = ["contained", "exact_match", "f1_score", "normalize_answer"]
