"""The cascade scorer (workers.rag.cascade): features, the fit against a plain logistic regression,
threshold selection against a plain per-question cascade, decisions, and its JSON round trip."""

from __future__ import annotations

import itertools
import json
import math
import random
import time

import numpy as np
import pytest

from workers.rag.cascade import (
    GRID,
    NEVER,
    ScorerParams,
    cascade_decide,
    cascade_features,
    cascade_scorer_fit,
    cascade_simulate,
    thresholds_select,
)


def _answer(rng: random.Random, tier: int, question: int) -> dict:
    right = rng.random() < 0.35 + 0.25 * tier
    support = min(1.0, max(0.0, (0.7 if right else 0.3) + rng.gauss(0, 0.2)))
    label = "grounded" if support > 0.6 else ("weak" if support > 0.3 else "unsupported")
    return {"question": question, "tier": tier, "correct": right, "cost": [0.0, 1.0, 4.0][tier],
            "quality_label": label, "support": support, "support_score": support * 0.9,
            "retrieval_confidence": None if question < 5 else rng.random(), "citations_removed": 0,
            "finish_reason": "stop", "answer": "word " * rng.randint(1, 20)}


@pytest.fixture
def rows() -> list[dict]:
    rng = random.Random(7)
    return [_answer(rng, tier, q) for q in range(120) for tier in range(3)]


def _plain_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Plain Newton steps on the L2-penalised log loss sklearn minimises: ½‖w‖² + C Σ logloss (b unpenalised)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    penalty = np.eye(xb.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(xb @ theta)))
        grad = penalty @ theta + c * xb.T @ (p - y)
        hessian = penalty + c * (xb.T * (p * (1 - p))) @ xb
        theta -= np.linalg.solve(hessian, grad)
    return theta[:-1], float(theta[-1])


def test_it_reads_the_quality_signals_as_features_and_flags_missing_ones():
    features = cascade_features({"quality_label": "weak", "support": 0.5, "support_score": 0.4,
                                 "retrieval_confidence": None, "citations_removed": 9,
                                 "finish_reason": "repetition", "answer": "one two three"})
    assert features["label_weak"] == 1 and features["label_grounded"] == 0
    assert features["retrieval_confidence_missing"] == 1 and features["retrieval_confidence"] == 0.5
    assert features["citations_removed"] == 5  # capped
    assert features["repetition"] == 1
    assert features["answer_words_log"] == pytest.approx(math.log(4))
    assert features["logprob_missing"] == 1
    with_logprob = cascade_features({"quality_label": "grounded", "quality": {"mean_logprob": -0.7}})
    assert with_logprob["logprob"] == -0.7 and with_logprob["logprob_missing"] == 0
    # What runs of the local model store (QueryRun.quality, workers/rag/quality.py).
    from_a_run = cascade_features({"quality_label": "grounded", "quality": {"answer_logprob_mean": -1.25}})
    assert from_a_run["logprob"] == -1.25 and from_a_run["logprob_missing"] == 0


def test_it_fits_the_same_logistic_regression_as_a_plain_reference(rows):
    params = cascade_scorer_fit(rows, tiers=3)
    assert len(params.tiers) == 2  # the last tier always answers
    model = params.tiers[0]
    tier_rows = [r for r in rows if r["tier"] == 0]
    x = np.array([[cascade_features(r)[f] for f in model.features] for r in tier_rows])
    y = np.array([r["correct"] for r in tier_rows], dtype=float)
    x = (x - np.array(model.mean)) / np.array(model.scale)
    w, b = _plain_logistic(x, y, c=1.0)
    np.testing.assert_allclose(model.coef, w, atol=2e-3)
    assert model.intercept == pytest.approx(b, abs=2e-3)
    # And the stored model's probability is the plain sigmoid.
    p = 1 / (1 + np.exp(-(x[0] @ w + b)))
    assert model.score(cascade_features(tier_rows[0])) == pytest.approx(p, abs=1e-3)
    assert "logprob" not in model.features  # no row had one


def test_it_uses_the_logprob_feature_when_rows_carry_one(rows):
    for row in rows:
        row["quality"] = {"mean_logprob": -0.2 if row["correct"] else -1.5}
    params = cascade_scorer_fit(rows, tiers=3)
    model = params.tiers[0]
    assert "logprob" in model.features
    assert model.coef[model.features.index("logprob")] > 0.5  # a perfectly separating signal weighs in


def _fitted_tables(rows) -> tuple[list, list, list]:
    """Per question (sorted) and tier: the fitted scorer's score (the last tier always 1), right or not, cost."""
    params = cascade_scorer_fit(rows, tiers=3)
    questions = sorted({r["question"] for r in rows})
    table = {(r["question"], r["tier"]): r for r in rows}
    scores = [[params.tiers[t].score(cascade_features(table[q, t])) if t < 2 else 1.0 for t in range(3)]
              for q in questions]
    correct = [[table[q, t]["correct"] for t in range(3)] for q in questions]
    costs = [[float(table[q, t]["cost"]) for t in range(3)] for q in questions]
    return scores, correct, costs


def test_threshold_selection_matches_a_plain_exhaustive_cascade(rows):
    scores, correct, costs = _fitted_tables(rows)
    for floor in (0.5, 0.7, 0.99):
        chosen = thresholds_select(scores=scores, correct=correct, costs=costs, accuracy_floor=floor)
        reference = None
        for combo in itertools.product(sorted(set(GRID) | {1.01}), repeat=2):
            sim = cascade_simulate(scores=scores, correct=correct, costs=costs, thresholds=[*combo, 0])
            if sim["accuracy"] >= floor and (reference is None or sim["cost"] < reference["cost"] - 1e-12):
                reference = sim
        if reference is None:  # unreachable floor: the most accurate
            assert not chosen["met"]
            continue
        assert chosen["met"]
        assert chosen["cost"] == pytest.approx(reference["cost"])
        sim = cascade_simulate(scores=scores, correct=correct, costs=costs, thresholds=[*chosen["thresholds"], 0])
        assert sim["accuracy"] == pytest.approx(chosen["accuracy"]) and sim["cost"] == pytest.approx(chosen["cost"])
    # Under a cost target: the most accurate within it.
    chosen = thresholds_select(scores=scores, correct=correct, costs=costs, cost_target=1.0)
    best = max(
        (cascade_simulate(scores=scores, correct=correct, costs=costs, thresholds=[*combo, 0])
         for combo in itertools.product(sorted(set(GRID) | {1.01}), repeat=2)),
        key=lambda sim: (sim["cost"] <= 1.0, sim["accuracy"]),
    )
    assert chosen["met"] and chosen["cost"] <= 1.0
    assert chosen["accuracy"] == pytest.approx(best["accuracy"])


def test_the_fit_meets_its_floor_and_round_trips_as_plain_json(rows):
    params = cascade_scorer_fit(rows, tiers=3, accuracy_floor=0.6)
    assert params.objective["met"] and params.objective["fit_accuracy"] >= 0.6
    text = json.dumps(params.as_dict())
    again = ScorerParams.from_dict(json.loads(text))
    probe = cascade_features(rows[0])
    assert again.tiers[0].score(probe) == pytest.approx(params.tiers[0].score(probe))
    assert [t.threshold for t in again.tiers] == [t.threshold for t in params.tiers]


def test_bad_scorer_json_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="tier 1"):
        ScorerParams.from_dict({"tiers": [{"features": ["support"], "mean": [0], "scale": [1]}]})
    with pytest.raises(ValueError, match="unknown features"):
        ScorerParams.from_dict({"tiers": [{"features": ["nope"], "mean": [0], "scale": [1], "coef": [1],
                                           "intercept": 0}]})
    tier = {"features": ["support"], "mean": [0], "scale": [1], "coef": [1], "intercept": 0}
    # The search's "never accept" threshold (1.01) round-trips; past it is refused.
    assert ScorerParams.from_dict({"tiers": [{**tier, "threshold": NEVER}]}).tiers[0].threshold == NEVER
    with pytest.raises(ValueError, match="threshold"):
        ScorerParams.from_dict({"tiers": [{**tier, "threshold": 1.5}]})


def test_decisions_escalate_below_the_threshold_and_the_last_tier_always_answers(rows):
    params = cascade_scorer_fit(rows, tiers=3)
    params.tiers[0].threshold = 0.99
    low = cascade_decide(params=params, tier=0, tiers=3, result=rows[0])
    assert not low.accept and "escalate" in low.reason
    params.tiers[0].threshold = 0.0
    assert cascade_decide(params=params, tier=0, tiers=3, result=rows[0]).accept
    degenerate = {**rows[0], "quality_label": "degenerate"}
    assert not cascade_decide(params=params, tier=0, tiers=3, result=degenerate).accept
    assert cascade_decide(params=params, tier=2, tiers=3, result=degenerate).accept
    # Unfitted: the label prior with the support score.
    sure = {"quality_label": "grounded", "support_score": 0.9}
    assert cascade_decide(params=None, tier=0, tiers=2, result=sure).accept
    assert not cascade_decide(params=None, tier=0, tiers=2, result={"quality_label": "unsupported"}).accept


def test_many_tiers_are_searched_by_coordinate_descent_fast_and_as_the_simulation_says():
    rng = random.Random(3)
    tiers, questions = 8, 150
    right = [[rng.random() < 0.3 + 0.08 * t for t in range(tiers)] for _ in range(questions)]
    # Scores that mostly know: a right answer scores high, a wrong one low, with noise.
    scores = [[min(1.0, max(0.0, (0.7 if r else 0.3) + rng.gauss(0, 0.15))) for r in row] for row in right]
    costs = [[float(2 ** t) for t in range(tiers)] for _ in range(questions)]
    started = time.perf_counter()
    chosen = thresholds_select(scores=scores, correct=right, costs=costs, accuracy_floor=0.8)
    assert time.perf_counter() - started < 30  # the exhaustive grid would be 22^7 combinations
    assert chosen["search"] == "coordinate descent" and len(chosen["thresholds"]) == tiers - 1
    sim = cascade_simulate(scores=scores, correct=right, costs=costs, thresholds=[*chosen["thresholds"], 0])
    assert sim["accuracy"] == pytest.approx(chosen["accuracy"]) and sim["cost"] == pytest.approx(chosen["cost"])
    assert chosen["met"] and chosen["accuracy"] >= 0.8
    always_last = sum(costs[0])
    assert chosen["cost"] < always_last / 2  # far cheaper than escalating every question to the last tier


def test_coordinate_descent_finds_the_exhaustive_optimum_on_a_small_cascade(rows):
    scores, correct, costs = _fitted_tables(rows)
    for floor in (0.5, 0.7):
        exhaustive = thresholds_select(scores=scores, correct=correct, costs=costs, accuracy_floor=floor)
        descent = thresholds_select(scores=scores, correct=correct, costs=costs, accuracy_floor=floor,
                                    exhaustive_up_to=0)
        assert (exhaustive["search"], descent["search"]) == ("exhaustive", "coordinate descent")
        assert descent["met"] == exhaustive["met"]
        assert descent["cost"] == pytest.approx(exhaustive["cost"])
