"""Which pipelines are on the accuracy/cost frontier (Pareto-optimal): no other is as cheap and as accurate,
and strictly better in one. Pure Python, no Django.

``frontier`` sorts once and sweeps (n log n); ``frontier_reference`` is the plain pairwise check the
tests compare it with.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

Point = tuple[str, Decimal | float, float]  # (name, cost per question, accuracy)


def _dominates(a: Point, b: Point) -> bool:
    return a[1] <= b[1] and a[2] >= b[2] and (a[1] < b[1] or a[2] > b[2])


def frontier_reference(points: Sequence[Point]) -> set[str]:
    """The names no other point dominates (cheaper-or-equal and at-least-as-accurate, better in one)."""
    return {p[0] for p in points if not any(_dominates(q, p) for q in points)}


def frontier(points: Sequence[Point]) -> set[str]:
    """As ``frontier_reference``: by cost ascending (accuracy descending among equal costs), a point is on
    the frontier when it is more accurate than every cheaper one, or ties the best of its own cost."""
    on: set[str] = set()
    best_cheaper: float | None = None  # the best accuracy among strictly cheaper points
    ordered = sorted(points, key=lambda p: (p[1], -p[2]))
    i = 0
    while i < len(ordered):
        cost = ordered[i][1]
        group = [p for p in ordered[i:] if p[1] == cost]
        top = group[0][2]
        if best_cheaper is None or top > best_cheaper:
            on.update(p[0] for p in group if p[2] == top)
        best_cheaper = top if best_cheaper is None else max(best_cheaper, top)
        i += len(group)
    return on
