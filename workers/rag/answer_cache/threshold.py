"""Whether a semantic hit at similarity s may be served: a per-entry error bound under δ (after vCache).

vCache (Schroeder et al., 2025) shows that no single global similarity threshold is right: some cached
questions have near neighbours with different answers at 0.95, others are safe at 0.8. So each entry
keeps its own observations — (similarity, correct?) pairs from lookups near it: a candidate the cheap
verification rejected is an error at its similarity; a candidate not served (its bound too high) is
labelled when the fresh answer arrives (same answer as the cached one or not).

The estimate leans on one assumption, monotonicity: a wrong hit at similarity s' ≥ s says the error risk
at s is at least as high, a correct one at s' ≤ s says it is at most as low. Evidence on the other side
decays with the distance (``bandwidth``). The entry's own counts are added to a share (``pool_weight``)
of every entry's counts (the team's cache for that key: a prior that lets a new entry serve before it
has history of its own), and to ``prior_errors`` pseudo-errors (the conservative start: with no
evidence, nothing is served semantically). The bound is the Wilson upper bound of the error rate at
confidence ``z``; a hit is served only when it is ≤ δ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Observation:
    similarity: float
    correct: bool
    caught: bool = False  # an error the cheap verification caught (weighted by ``caught_weight``)


@dataclass(frozen=True)
class ThresholdConfig:
    delta: float = 0.05  # the error bound δ: serve when the bound on P(wrong | s) is at most this
    z: float = 1.645  # one-sided 95% Wilson bound
    prior_errors: float = 1.0  # pseudo-errors every estimate starts from (conservative start)
    pool_weight: float = 0.5  # the share of the team's other entries' evidence that counts for this one
    bandwidth: float = 0.02  # how fast evidence on the uninformative side decays with |s - s'|
    caught_weight: float = 0.5  # what a verification reject counts as an error
    min_similarity: float = 0.80  # below this, no candidate at all

    def __post_init__(self) -> None:
        assert 0 < self.delta < 1, "delta is a probability"
        assert self.prior_errors > 0, "a conservative start needs at least some pseudo-error"
        assert 0 <= self.pool_weight <= 1 and self.bandwidth > 0 and self.z >= 0


class Evidence:
    """Observations as arrays, appended in place: the pooled evidence of many entries, weighed at once."""

    def __init__(self, observations: Iterable[Observation] = ()) -> None:
        rows = [(o.similarity, o.correct, o.caught) for o in observations]
        self._n = len(rows)
        self._data = np.zeros((max(self._n, 64), 3), dtype=np.float64)  # (N, [similarity, correct, caught])
        if rows:
            self._data[: self._n] = np.asarray(rows, dtype=np.float64)

    def add(self, o: Observation) -> None:
        if self._n == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self._n] = (o.similarity, o.correct, o.caught)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def weights(self, s: float, config: ThresholdConfig) -> tuple[float, float]:
        """(weighted errors, weighted corrects) that speak to similarity ``s``."""
        data = self._data[: self._n]
        sim, correct, caught = data[:, 0], data[:, 1] > 0.5, data[:, 2] > 0.5
        toward = np.where(correct, sim <= s, sim >= s)  # the informative side: full weight
        decay = np.exp(-np.abs(sim - s) / config.bandwidth)
        w = np.where(toward, 1.0, decay)
        w_err = np.where(caught, config.caught_weight, 1.0)
        return float(np.sum(w * w_err * ~correct)), float(np.sum(w * correct))


def _weights(observations: Sequence[Observation] | Evidence, s: float, config: ThresholdConfig) -> tuple[float, float]:
    """(weighted errors, weighted corrects) that speak to similarity ``s``."""
    evidence = observations if isinstance(observations, Evidence) else Evidence(observations)
    return evidence.weights(s, config)


def wilson_upper(errors: float, n: float, z: float) -> float:
    """The Wilson score upper bound of a rate from (possibly fractional) counts."""
    if n <= 0:
        return 1.0
    p = errors / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def error_bound(
    *, entry: Sequence[Observation] | Evidence, pool: Sequence[Observation] | Evidence, similarity: float,
    config: ThresholdConfig,
) -> float:
    """The upper bound on P(a hit of this entry at ``similarity`` is wrong). ``pool``: every entry's
    observations (this one's included; they are not counted twice)."""
    own_e, own_c = _weights(entry, similarity, config)
    all_e, all_c = _weights(pool, similarity, config)
    other_e, other_c = max(all_e - own_e, 0.0), max(all_c - own_c, 0.0)
    errors = config.prior_errors + own_e + config.pool_weight * other_e
    corrects = own_c + config.pool_weight * other_c
    return wilson_upper(errors, errors + corrects, config.z)


def may_serve(
    *, entry: Sequence[Observation] | Evidence, pool: Sequence[Observation] | Evidence, similarity: float,
    config: ThresholdConfig,
) -> tuple[bool, float]:
    """(serve?, bound): serve only at or above ``min_similarity`` with the bound ≤ δ."""
    if similarity < config.min_similarity:
        return False, 1.0
    bound = error_bound(entry=entry, pool=pool, similarity=similarity, config=config)
    return bound <= config.delta, bound


def fixed_threshold_serves(similarity: float, threshold: float) -> bool:
    """What LiteLLM/GPTCache do: one global cosine threshold (the benchmark's comparison)."""
    return similarity >= threshold


__all__ = [
    "Evidence", "Observation", "ThresholdConfig", "error_bound", "fixed_threshold_serves", "may_serve", "wilson_upper",
]
