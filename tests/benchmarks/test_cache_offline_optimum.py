"""The cache benchmark's ceiling: ``offline_optimum`` equals an exhaustive search over every eviction choice."""

from __future__ import annotations

import random
from functools import cache

import pytest

from benchmarks.cache import offline_optimum


def _brute_force(rows: list[tuple[str, int, float, str]], capacity: int) -> float:
    """Every miss is stored; when full, try evicting each entry in turn: the best total saved on "report"."""
    entries = [entry for _team, entry, _saved, _split in rows]

    @cache
    def best(t: int, cached: frozenset[int]) -> float:
        if t == len(rows):
            return 0.0
        _team, entry, saved, split = rows[t]
        if entry in cached:
            return (saved if split == "report" else 0.0) + best(t + 1, cached)
        if len(cached) < capacity:
            return best(t + 1, cached | {entry})
        return max(best(t + 1, (cached - {victim}) | {entry}) for victim in cached)

    assert len(set(entries)) >= 1
    return best(0, frozenset())


@pytest.mark.parametrize("seed", range(12))
def test_the_offline_optimum_is_the_best_any_eviction_order_achieves(seed: int) -> None:
    rng = random.Random(seed)
    keys = rng.randint(3, 6)
    capacity = rng.randint(2, 3)
    values = {k: rng.choice((0.1, 0.5, 2.0, 7.0)) for k in range(keys)}
    weights = [1 / (k + 1) for k in range(keys)]
    rows, seen = [], set()
    for _ in range(rng.randint(10, 16)):
        key = rng.choices(range(keys), weights=weights)[0]
        saved = values[key] if key in seen else 0.0  # a request after the first saves the entry's value
        seen.add(key)
        rows.append(("a", key, saved, rng.choice(("report", "report", "tune"))))

    assert offline_optimum(rows, capacity) == pytest.approx(_brute_force(rows, capacity), abs=1e-6)


def test_each_team_has_its_own_capacity() -> None:
    # Team a alternates two entries, team b two others: with one place per team beside the one asked
    # (capacity 2), both teams keep both of theirs and every repeat is saved.
    rows = []
    for _ in range(3):
        for team, base in (("a", 0), ("b", 10)):
            rows += [(team, base, 1.0, "report"), (team, base + 1, 1.0, "report")]
    saved_when_repeated = 1.0 * (len(rows) - 4)  # the first request of each of the four entries saves nothing
    rows = [(team, entry, 0.0 if i < 4 else saved, split) for i, (team, entry, saved, split) in enumerate(rows)]
    assert offline_optimum(rows, 2) == pytest.approx(saved_when_repeated)
    assert offline_optimum(rows, 1) == pytest.approx(0.0)
