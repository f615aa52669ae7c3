"""Paired comparison of two methods' per-question outcomes: the discordant pairs and an exact sign test."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def paired_vs(baseline: Mapping[Any, bool], method: Mapping[Any, bool]) -> dict[str, Any]:
    """Question-by-question retention against a baseline on the same questions (ids both ran).

    `won`: the method keeps the answer and the baseline does not; `lost`: the other way round;
    `p_two_sided`: the exact sign test (McNemar's, exact) on those discordant pairs — how often a
    coin would split them at least this unevenly. Retention rates a question or two apart are
    often just which questions the sample drew; this says when they are not.
    """
    shared = baseline.keys() & method.keys()
    won = sum(method[q] and not baseline[q] for q in shared)
    lost = sum(baseline[q] and not method[q] for q in shared)
    return {"won": won, "lost": lost, "p_two_sided": round(sign_test(won, lost), 4)}


def sign_test(a: int, b: int) -> float:
    """Exact two-sided binomial (p = 1/2) test of a against b successes; 1.0 when both are 0."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2**n
    return min(1.0, 2 * tail)
