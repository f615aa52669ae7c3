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


def test_quality_fit_chooses_on_the_design_rows_and_scores_the_report_rows(tmp_path, monkeypatch, capsys):
    """Span presence decides rightness in both datasets, the evidence is noise: the fit must choose span presence
    on the design files alone and then rank the report files perfectly with it."""
    import json
    import random
    import sys

    from benchmarks import quality_fit

    rng = random.Random(7)

    def rows(n: int) -> list[dict]:
        made = []
        for i in range(n):
            right = i % 3 == 0
            row = _row(rng.random(), right, [-0.5])
            # Right answers quote a passage's short answer; wrong ones name something the passages lack.
            row["answer"] = "The answer is: 1889." if right else "The answer is: 1950."
            made.append(row)
        return made

    paths = {}
    for name in ("nq-design", "hp-design", "nq-report", "hp-report"):
        paths[name] = tmp_path / f"{name}.rows.jsonl"
        paths[name].write_text("\n".join(json.dumps(r) for r in rows(30)))
    out = tmp_path / "fit.json"
    monkeypatch.setattr(sys, "argv", ["quality_fit", str(paths["nq-design"]), str(paths["hp-design"]),
                                      "--report", str(paths["nq-report"]), str(paths["hp-report"]),
                                      "--config", "c", "--repeats", "2", "--max-signals", "1", "--json", str(out)])
    quality_fit.main()
    result = json.loads(out.read_text())
    assert result["chosen"] == "evidence+span_in_passages"
    assert result["coefficients"]["span_in_passages"] > 1
    assert result["chosen_auroc_report"] == {"nq": 1.0, "hp": 1.0, "pooled": 1.0}
    assert result["n_design"]["nq"] == [30, 10] and result["n_report"]["hp"] == [30, 10]
    assert result["grounding_known"] == {"design": 0, "report": 0}  # no cache, no model: unknown
    assert capsys.readouterr().out.strip().startswith("{")
