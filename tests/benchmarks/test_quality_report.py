"""rag_qa's quality figures and quality_fit's signals, on saved rows built by hand."""

from __future__ import annotations

from benchmarks.quality_fit import row_signals
from benchmarks.rag_qa import _quality_report
from workers.rag.quality import SCORE_MODEL, auroc


def _row(score: float, right: bool, logprobs: list[float] | None = None) -> dict:
    sentence = {"text": "It was 1889.", "score": score, "passage": 1, "candidates": [1], "cosines": [score],
                "overlaps": [score]}
    return {"config": "c", "question": "When was it built?", "answer": "It was 1889.", "finish_reason": "stop",
            "contained": float(right), "sentences": [sentence], "token_logprobs": logprobs or [],
            "retrieval_confidence": None, "passages": ["It was built in 1889."]}


def test_the_shipped_support_score_over_every_row_ranks_as_its_evidence():
    rows = [_row(s, s > 0.5) for s in (0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6)]
    report = _quality_report(rows)
    assert report["support_auroc_all_shipped"] == 1.0 and report["evidence_auroc_all_shipped"] == 1.0
    flipped = _quality_report([{**r, "contained": 1.0 - r["contained"]} for r in rows])
    assert flipped["support_auroc_all_shipped"] == 0.0
    assert auroc([0.2, 0.8], [False, True]) == 1.0


def test_row_signals_are_the_services_signals():
    signals = row_signals(_row(0.6, True, [-0.5, -1.5]))
    assert signals["evidence"] == 0.6 and signals["logprob_mean"] == -1.0 and signals["misfit"] == 0.0
    assert signals["top_passage_overlap"] == 1.0  # "1889" is the sentence's only new content word
    assert 0 < SCORE_MODEL.score(evidence=0.6, logprob_mean=-1.0, fit=None) < 1
