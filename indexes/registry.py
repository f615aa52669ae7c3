"""Retrievers by name: "dense", "bm25", "hybrid".

Each retriever takes a query string and returns `SearchHit`s, best first, with the
provenance of every hit, so the pipeline and the UI can show which retriever found
a passage. Pure Python: the Django side passes in a loaded embedder and indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from indexes.bm25 import BM25Index
from indexes.hybrid import DEFAULT_DENSE_WEIGHT, DEFAULT_FUSION_METHOD, SearchHit, fuse, hybrid_weights
from indexes.vector_index import VectorIndex

DEFAULT_CANDIDATES = 100  # per-retriever depth before fusion (the depth the weights were tuned at)


class Retriever(Protocol):
    name: str

    def search(self, query: str, k: int = 10) -> list[SearchHit]: ...


class QueryEncoder(Protocol):
    def encode_query(self, text: str) -> np.ndarray: ...


def _dense_pairs(embedder: QueryEncoder, index: VectorIndex, query: str, k: int) -> list[tuple[int, float]]:
    scores, ids = index.search(embedder.encode_query(query), k)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


class DenseRetriever:
    name = "dense"

    def __init__(self, *, embedder: QueryEncoder, vector_index: VectorIndex) -> None:
        self.embedder = embedder
        self.vector_index = vector_index

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        pairs = _dense_pairs(self.embedder, self.vector_index, query, k)
        return [SearchHit(c, s, {"dense": (r, s)}) for r, (c, s) in enumerate(pairs, start=1)]


class BM25Retriever:
    name = "bm25"

    def __init__(self, *, bm25_index: BM25Index) -> None:
        self.bm25_index = bm25_index

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        pairs = self.bm25_index.search(query, k)
        return [SearchHit(c, s, {"bm25": (r, s)}) for r, (c, s) in enumerate(pairs, start=1)]


class HybridRetriever:
    """Dense + BM25, fused by `indexes.hybrid.fuse` (dense weighted higher; see there why)."""

    name = "hybrid"

    def __init__(
        self,
        *,
        embedder: QueryEncoder,
        vector_index: VectorIndex,
        bm25_index: BM25Index,
        dense_weight: float = DEFAULT_DENSE_WEIGHT,
        method: str = DEFAULT_FUSION_METHOD,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        self.embedder = embedder
        self.vector_index = vector_index
        self.bm25_index = bm25_index
        self.weights = hybrid_weights(dense_weight)
        self.method = method
        self.candidates = candidates

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        depth = max(k, self.candidates)
        lists = {
            "dense": _dense_pairs(self.embedder, self.vector_index, query, depth),
            "bm25": self.bm25_index.search(query, depth),
        }
        return fuse(lists, weights=self.weights, method=self.method, k=k)


RETRIEVERS: dict[str, Callable[..., Retriever]] = {
    "dense": DenseRetriever,
    "bm25": BM25Retriever,
    "hybrid": HybridRetriever,
}


def get_retriever(name: str, **components: Any) -> Retriever:
    """Build a retriever by name from the components it needs (embedder, vector_index, bm25_index, options).

    Components a retriever does not use are ignored, so callers can pass everything they have.
    """
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r} (valid: {', '.join(RETRIEVERS)})")
    needs = {
        "dense": ("embedder", "vector_index"),
        "bm25": ("bm25_index",),
        "hybrid": ("embedder", "vector_index", "bm25_index", "dense_weight", "method", "candidates"),
    }[name]
    missing = [
        n for n in needs[:3] if n in ("embedder", "vector_index", "bm25_index") and n not in components
    ]
    if missing:
        raise ValueError(f"retriever {name!r} needs {', '.join(missing)}")
    return RETRIEVERS[name](**{n: components[n] for n in needs if n in components})
