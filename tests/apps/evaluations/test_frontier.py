"""The accuracy/cost frontier: the sort-and-sweep against the plain pairwise check."""

from __future__ import annotations

import random
from decimal import Decimal

from apps.evaluations.frontier import frontier, frontier_reference


def test_it_keeps_the_pipelines_no_other_beats_on_both_cost_and_accuracy():
    points = [
        ("extractive", Decimal("0.0001"), 0.40),
        ("naive", Decimal("0.0010"), 0.60),
        ("compressed", Decimal("0.0005"), 0.60),  # as accurate as naive, cheaper: naive is off
        ("remote", Decimal("0.0100"), 0.80),
        ("worse", Decimal("0.0200"), 0.50),
    ]
    assert frontier(points) == frontier_reference(points) == {"extractive", "compressed", "remote"}


def test_ties_stay_on_the_frontier_together():
    points = [("a", Decimal("1"), 0.5), ("b", Decimal("1"), 0.5), ("c", Decimal("1"), 0.4), ("d", Decimal("0"), 0.5)]
    assert frontier(points) == frontier_reference(points) == {"d"}
    same = [("a", Decimal("1"), 0.5), ("b", Decimal("1"), 0.5)]
    assert frontier(same) == frontier_reference(same) == {"a", "b"}


def test_it_matches_the_reference_on_random_points():
    rng = random.Random(27)
    for _ in range(300):
        points = [(f"p{i}", Decimal(rng.randint(0, 6)), rng.randint(0, 4) / 4) for i in range(rng.randint(0, 9))]
        assert frontier(points) == frontier_reference(points), points
