"""The answer cache's engine side: eviction policies against their plain reference, the question checks,
the per-entry threshold."""

from __future__ import annotations

import random

import pytest

from workers.rag.answer_cache import (
    Observation,
    ThresholdConfig,
    answers_agree,
    error_bound,
    facts_agree,
    may_serve,
    question_hash,
)
from workers.rag.answer_cache.eviction import POLICY_NAMES, CacheSim, eviction_policy
from workers.rag.answer_cache.eviction.reference import REFERENCES


def _trace(seed: int, n_keys: int = 60, length: int = 3000) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    costs = {k: rng.choice([0.0005, 0.002, 0.01, 0.05]) for k in range(n_keys)}  # 100× apart
    weights = [1 / (k + 1) ** 0.9 for k in range(n_keys)]
    keys = rng.choices(range(n_keys), weights=weights, k=length)
    return [(k, costs[k]) for k in keys]


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("capacity", [1, 6, 20])
def test_each_policy_hits_exactly_where_its_plain_reference_does(name, seed, capacity):
    trace = _trace(seed)
    sim = CacheSim(eviction_policy(name), capacity)
    got = [sim.request(key, cost=cost, now=t) for t, (key, cost) in enumerate(trace)]
    assert got == REFERENCES[name](trace, capacity)


def test_an_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown eviction policy 'fifo' \(valid: gdsf, lec, lru\)"):
        eviction_policy("fifo")


def test_cost_aware_policies_save_more_dollars_than_lru_when_costs_vary():
    trace = _trace(7, n_keys=200, length=20_000)
    saved = {}
    for name in POLICY_NAMES:
        sim = CacheSim(eviction_policy(name), 20)
        saved[name] = sum(cost for t, (key, cost) in enumerate(trace) if sim.request(key, cost=cost, now=t))
    assert saved["gdsf"] > saved["lru"] and saved["lec"] > saved["lru"]


def test_the_exact_key_folds_case_punctuation_and_spaces_only():
    assert question_hash("Who wrote Hamlet?") == question_hash("  who wrote   hamlet ")
    assert question_hash("Who wrote Hamlet?") != question_hash("Who wrote Macbeth?")


@pytest.mark.parametrize(("a", "b", "agree"), [
    ("who won the world cup in 1998", "who won the world cup in 2002", False),
    ("how many moons does Mars have", "how many moons does Jupiter have", False),
    ("which countries are in the EU", "which countries are not in the EU", False),
    ("who got the first nobel prize in physics", "who received the first nobel prize in physics", True),
    ("What is the capital of France?", "Which city is the capital of France?", True),
    ("when was the Eiffel Tower built", "when was the eiffel tower constructed", True),
    ("the two towers release date", "release date of the 2 towers", True),
])
def test_questions_must_agree_on_numbers_names_and_negation(a, b, agree):
    assert facts_agree(a, b)[0] is agree


def test_answers_agree_when_one_contains_the_other_or_they_overlap_enough():
    assert answers_agree("Wilhelm Conrad Röntgen", "The prize went to Wilhelm Conrad Röntgen in 1901.")
    assert not answers_agree("Paris", "Berlin")


def test_the_threshold_starts_conservative_and_is_learned_per_entry():
    config = ThresholdConfig(delta=0.04)
    assert not may_serve(entry=[], pool=[], similarity=0.99, config=config)[0]  # no evidence: never
    good = [Observation(0.85, True)] * 120
    assert may_serve(entry=good, pool=good, similarity=0.9, config=config)[0]
    # One entry with a wrong neighbour at 0.95 refuses at 0.93 while its neighbour entries serve.
    risky = [*good, Observation(0.95, False)]
    assert not may_serve(entry=risky, pool=risky, similarity=0.93, config=config)[0]
    assert may_serve(entry=good, pool=risky + good, similarity=0.93, config=config)[0]
    # Below the similarity floor nothing is a candidate.
    assert not may_serve(entry=good, pool=good, similarity=0.7, config=config)[0]


def test_the_bound_falls_with_evidence_and_rises_with_errors():
    config = ThresholdConfig()
    bounds = [error_bound(entry=[Observation(0.8, True)] * n, pool=[], similarity=0.9, config=config)
              for n in (0, 10, 100)]
    assert bounds[0] > bounds[1] > bounds[2]
    with_error = error_bound(entry=[Observation(0.8, True)] * 100 + [Observation(0.92, False)], pool=[],
                             similarity=0.9, config=config)
    assert with_error > bounds[2]
