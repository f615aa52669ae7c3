"""Fusing ranked lists from several retrievers, with provenance.

The default fusion is a convex combination of per-query z-normalised scores (top-100 of each
retriever, shifted so a document missing from a list scores that list's floor), dense weighted
0.6 and BM25 0.4. Why not plain reciprocal rank fusion: it throws the score gap away, so when dense
is confident a middling BM25 rank still drags the wrong passage up; on nq-open-oracle it scored
below dense alone. The weights were chosen on squad-v2-dev-sample before nq-open-oracle was looked
at; the tuning table is in docs/benchmarks.md ("How the fusion was chosen").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Per-retriever result lists: name -> [(chunk_id, score), ...] best first.
RankedLists = Mapping[str, Sequence[tuple[int, float]]]

RRF_K = 60
DEFAULT_DENSE_WEIGHT = 0.6
DEFAULT_FUSION_METHOD = "zscore"
FUSION_METHODS = ("zscore", "convex", "rrf")


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    score: float
    # retriever name -> (1-based rank, raw score) in that retriever's list
    retrievers: dict[str, tuple[int, float]] = field(default_factory=dict)


def _provenance(lists: RankedLists) -> dict[int, dict[str, tuple[int, float]]]:
    found: dict[int, dict[str, tuple[int, float]]] = {}
    for name, hits in lists.items():
        for rank, (chunk_id, score) in enumerate(hits, start=1):
            found.setdefault(int(chunk_id), {}).setdefault(name, (rank, float(score)))
    return found


def _normalise(scores: np.ndarray, method: str) -> np.ndarray:
    if scores.size == 0:
        return scores
    if method == "zscore":
        std = scores.std()
        z = (scores - scores.mean()) / std if std > 1e-12 else np.zeros_like(scores)
        return z - z.min()  # shift so "missing" (0) is the floor, like min-max
    lo, hi = scores.min(), scores.max()
    if hi - lo <= 1e-12:
        return np.ones_like(scores)  # a single hit, or all tied: full credit
    return (scores - lo) / (hi - lo)


def fuse(
    lists: RankedLists,
    *,
    weights: Mapping[str, float] | None = None,
    method: str = DEFAULT_FUSION_METHOD,
    k: int = 10,
    rrf_k: int = RRF_K,
) -> list[SearchHit]:
    """Fuse ranked lists into one, best first, each hit naming the retrievers that found it.

    method "zscore" (default): sum of weight * per-list z-score, shifted so each
    list's floor is 0 (= the credit of a missing document); "convex": the same with
    min-max scaling; "rrf": sum of weight / (rrf_k + rank). Weights default to equal.
    Ties break by chunk id, so results are deterministic.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r} (valid: {', '.join(FUSION_METHODS)})")
    weights = dict(weights or {})
    found = _provenance(lists)
    if not found:
        return []
    fused: dict[int, float] = dict.fromkeys(found, 0.0)
    for name, hits in lists.items():
        if not hits:
            continue
        w = float(weights.get(name, 1.0))
        if method == "rrf":
            for rank, (chunk_id, _) in enumerate(hits, start=1):
                fused[int(chunk_id)] += w / (rrf_k + rank)
            continue
        ids = [int(c) for c, _ in hits]
        norm = _normalise(np.asarray([s for _, s in hits], dtype=np.float64), method)
        for chunk_id, value in zip(ids, norm, strict=True):
            fused[chunk_id] += w * float(value)
    ordered = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [SearchHit(chunk_id=c, score=s, retrievers=found[c]) for c, s in ordered]


def hybrid_weights(dense_weight: float = DEFAULT_DENSE_WEIGHT) -> dict[str, float]:
    """{"dense": w, "bm25": 1 - w}."""
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError("dense_weight must be within [0, 1]")
    return {"dense": dense_weight, "bm25": 1.0 - dense_weight}
