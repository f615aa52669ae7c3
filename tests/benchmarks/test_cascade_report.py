"""benchmarks/cascade_report.py on synthetic tier rows: the JSON shape, disjoint splits, the oracle bound."""

from __future__ import annotations

import random

import pytest

from benchmarks.cascade_report import report

TIERS = ["extractive", "small", "strong"]


def _rows() -> list[dict]:
    rng = random.Random(3)
    rows = []
    for dataset in ("nq", "hp"):
        for index in range(12):
            for t, tier in enumerate(TIERS):
                right = rng.random() < 0.3 + 0.2 * t
                support = 0.8 if right else 0.2
                rows.append({"dataset": dataset, "index": index, "tier": tier, "contained": right,
                             "f1": float(right), "cost": str([1e-6, 1e-5, 4e-5][t]),
                             "quality_label": "grounded" if right else "unsupported", "support": support,
                             "support_score": support, "answer": "an answer"})
    rows.append({**rows[0], "index": 99})  # a question not every tier answered: left out
    return rows


def test_it_reports_the_cascade_each_tier_and_the_oracle_on_the_held_out_half():
    out = report(_rows(), tier_names=TIERS)
    assert out["splits"]["nq"] == {"fit": "questions 1-6 (6)", "report": "questions 7-12 (6)"}
    assert set(out["tiers"]) == set(TIERS) and out["cascade"]["n"] == 12
    assert sum(out["cascade"]["tier_share"].values()) == pytest.approx(1.0)
    oracle = out["oracle_router"]
    assert oracle["contained"] >= max(t["contained"] for t in out["tiers"].values())
    assert oracle["cost_per_question"] <= out["tiers"]["strong"]["cost_per_question"]
    assert out["cascade"]["cost_per_question"] >= out["tiers"]["extractive"]["cost_per_question"]
    assert set(out["targets"]) >= {"cost_of_pass_ratio", "contained_within_1_point", "oracle_saving_recovered"}
    assert set(out["by_dataset"]) == {"nq", "hp"}


def test_the_ablation_hides_every_log_probability_from_the_scorer_and_keeps_the_rest():
    from benchmarks.cascade import _without_logprob
    from workers.rag.cascade import answer_logprob, cascade_features

    row = {"tier": "small", "quality_label": "grounded", "logprob": -0.3,
           "quality": {"answer_logprob_mean": -1.25, "mean_logprob": -0.5, "support_score": 0.7}}
    assert answer_logprob(row) == -1.25
    hidden = _without_logprob(row)
    assert answer_logprob(hidden) is None and cascade_features(hidden)["logprob_missing"] == 1
    assert hidden["quality"] == {"support_score": 0.7} and hidden["quality_label"] == "grounded"
    assert row["quality"]["answer_logprob_mean"] == -1.25  # the input row is left as it was
