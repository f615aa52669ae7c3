"""Indexes over the keys of a cached fixed context: k-means centroids and inner-product ANN (no Django).

The sparse attention backends (`workers.attention.squeezed`, `workers.attention.retrieval`) build
one of these per layer and KV head from the fixed context's post-RoPE keys, once, offline; at
decode time they use them to pick the few keys worth attending. `KeyCentroids` serves squeezed
attention; `FlatIPIndex`, `FaissANNIndex` and the attention-aware `QueryRoutedIndex` serve
retrieval (all with `search(x (n, D), k) -> ids (n, k)`, -1 where fewer than k were found).
Every index turns into a dict of plain arrays (faiss indexes via `faiss.serialize_index`, never
pickle), stored as a safetensors artifact beside the KV in `indexes.kv_store.KVStore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- helpers


def _faiss() -> Any:
    import faiss

    return faiss


def _f32(x: Any) -> np.ndarray:
    """A C-contiguous float32 numpy array from a numpy array or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def kmeans_labels(
    x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means of x (n, D) into k clusters -> (centroids (k, D), labels (n,) int64)."""
    faiss = _faiss()
    n, d = x.shape
    assert 1 <= k <= n, f"k-means needs 1 <= k <= n, got k={k}, n={n}"
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, n // k + 1))
    km.train(x)
    _, labels = km.index.search(x, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64)


def serialize(index: Any) -> np.ndarray:
    """A faiss index as a uint8 array (faiss's own format, never pickle)."""
    return np.asarray(_faiss().serialize_index(index), dtype=np.uint8)


def deserialize(data: np.ndarray) -> Any:
    return _faiss().deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))


# ---------------------------------------------------------------------------- centroids


@dataclass
class KeyCentroids:
    """k-means over one head's keys. Empty clusters keep size 0 (never selected, no mass).

    faiss k-means runs over the L2-normalised keys (the *direction* of a key decides which queries
    like it); each centroid is the mean of its cluster's unnormalised keys, so q·c estimates the
    cluster's average score. Optional second (coarse) level: k-means over the fine centroids, each
    coarse centroid the size-weighted mean of its fine centroids.

    centroids (C, D): mean of each cluster's unnormalised keys; sizes (C,); labels (n,) cluster of
    each key. Coarse level (optional): coarse (C1, D), coarse_sizes (C1,), parent (C,) coarse
    cluster of each fine cluster.
    """

    centroids: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    coarse: np.ndarray | None = None
    coarse_sizes: np.ndarray | None = None
    parent: np.ndarray | None = None

    @classmethod
    def build(
        cls, keys: Any, n_clusters: int, *, niter: int = 20, seed: int = 1234, n_coarse: int | None = None
    ) -> KeyCentroids:
        x = _f32(keys)  # (n, D)
        n, d = x.shape
        k = max(1, min(int(n_clusters), n))
        _, labels = kmeans_labels(_normalized(x), k, niter=niter, seed=seed)
        sizes = np.bincount(labels, minlength=k).astype(np.int64)  # (C,)
        sums = np.zeros((k, d), dtype=np.float64)
        np.add.at(sums, labels, x)
        centroids = (sums / np.maximum(sizes, 1)[:, None]).astype(np.float32)  # mean of unnormalised keys
        out = cls(centroids=centroids, sizes=sizes, labels=labels)
        if n_coarse:
            live = np.flatnonzero(sizes > 0)
            k1 = max(1, min(int(n_coarse), len(live)))
            _, live_parent = kmeans_labels(_normalized(centroids[live]), k1, niter=niter, seed=seed)
            parent = np.zeros(k, dtype=np.int64)
            parent[live] = live_parent
            coarse_sizes = np.bincount(parent, weights=sizes, minlength=k1).astype(np.int64)  # (C1,)
            coarse_sums = np.zeros((k1, d), dtype=np.float64)
            np.add.at(coarse_sums, parent, centroids.astype(np.float64) * sizes[:, None])
            out.coarse = (coarse_sums / np.maximum(coarse_sizes, 1)[:, None]).astype(np.float32)
            out.coarse_sizes = coarse_sizes
            out.parent = parent
        assert int(out.sizes.sum()) == n and out.labels.shape == (n,)
        return out


# ---------------------------------------------------------------------------- key ANN


class FlatIPIndex:
    """Exact maximum inner product search (faiss IndexFlatIP): the baseline the ANN indexes are measured against."""

    kind = "flat"

    def __init__(self, keys: Any) -> None:
        faiss = _faiss()
        x = _f32(keys)
        self.n, self.d = x.shape
        self.index = faiss.IndexFlatIP(self.d)
        self.index.add(x)

    def search(self, x: Any, k: int) -> np.ndarray:
        k = min(int(k), self.n)
        _, ids = self.index.search(_f32(x), k)
        return ids

    def scanned(self) -> float:
        """Keys whose score is computed per query (the cost of one search)."""
        return float(self.n)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {}  # rebuilt from the keys on load: adding n vectors is a copy

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], keys: Any, params: dict[str, Any]) -> FlatIPIndex:
        return cls(keys)


class FaissANNIndex:
    """HNSW or IVF-Flat with the inner-product metric over one head's keys."""

    def __init__(self, index: Any, kind: str, n: int, params: dict[str, Any]) -> None:
        self.index, self.kind, self.n, self.params = index, kind, n, dict(params)
        self._apply_search_params()

    @classmethod
    def build(cls, keys: Any, kind: str, params: dict[str, Any]) -> FaissANNIndex:
        faiss = _faiss()
        x = _f32(keys)
        n, d = x.shape
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(params.get("hnsw_m", 32)), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(params.get("ef_construction", 80))
            index.add(x)
        elif kind == "ivf":
            nlist = max(1, min(int(params.get("ivf_lists") or round(4 * np.sqrt(n))), n))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.min_points_per_centroid = 1
            index.train(x)
            index.add(x)
        else:
            raise ValueError(f"unknown faiss ANN kind {kind!r} (valid: hnsw, ivf)")
        return cls(index, kind, n, params)

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params.get("ef_search", 128))
        else:
            self.index.nprobe = int(self.params.get("nprobe", 8))

    def search(self, x: Any, k: int) -> np.ndarray:
        k = min(int(k), self.n)
        if self.kind == "hnsw" and self.index.hnsw.efSearch < k:
            self.index.hnsw.efSearch = k
        _, ids = self.index.search(_f32(x), k)
        return ids

    def scanned(self) -> float:
        """Approximate keys scored per query: IVF the probed lists; HNSW about efSearch * M."""
        if self.kind == "ivf":
            return float(min(self.n, self.n * self.index.nprobe / max(1, self.index.nlist)))
        return float(min(self.n, self.index.hnsw.efSearch * 2 * int(self.params.get("hnsw_m", 32))))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"faiss": serialize(self.index)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], keys: Any, params: dict[str, Any]) -> FaissANNIndex:
        index = deserialize(arrays["faiss"])
        kind = "hnsw" if hasattr(index, "hnsw") else "ivf"
        assert index.ntotal == _f32(keys).shape[0], "the stored index does not match the keys"
        return cls(index, kind, int(index.ntotal), params)


class QueryRoutedIndex:
    """Attention-aware lists: routed in query space, filled with the prefill queries' nearest keys.

    Queries and keys of attention come from different distributions (RetrievalAttention's
    out-of-distribution problem), so routing a decoding query to key clusters by q·centroid misses.
    Here the lists are built from the *prefill queries*: k-means over sampled prefill queries gives
    routing centroids in query space; each list holds the keys that the queries routed to it
    actually had among their nearest keys (exact inner product), plus every key in the list of the
    routing centroid that scores it highest (so each key is reachable). A decoding query is routed in
    query space (in distribution) to `nprobe` lists and the union is scored exactly.

    keys (n, D), queries (m, D) sampled prefill queries of the heads that read these keys.
    lists: CSR (offsets (R+1,), ids) of key ids per routing centroid (R, D).
    """

    kind = "aware"

    def __init__(self, keys: Any, routing: np.ndarray, offsets: np.ndarray, ids: np.ndarray, nprobe: int) -> None:
        self.keys = _f32(keys)  # (n, D)
        self.n = self.keys.shape[0]
        self.routing, self.offsets, self.ids = routing, offsets, ids
        self.nprobe = max(1, min(int(nprobe), len(routing)))
        self._last_scanned: list[int] = []

    @classmethod
    def build(cls, keys: Any, queries: Any, params: dict[str, Any]) -> QueryRoutedIndex:
        faiss = _faiss()
        x, q = _f32(keys), _f32(queries)
        n, d = x.shape
        m = q.shape[0]
        assert m >= 1, "the attention-aware index needs prefill queries"
        n_lists = max(1, min(int(params.get("aware_lists") or round(np.sqrt(m) * 2)), m))
        neighbours = max(1, min(int(params.get("aware_neighbours", 32)), n))
        routing, q_list = kmeans_labels(q, n_lists, niter=int(params.get("kmeans_iters", 20)),
                                        seed=int(params.get("seed", 1234)))
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        _, nearest = flat.search(q, neighbours)  # (m, neighbours): each sampled query's best keys
        pairs_list = np.repeat(q_list, neighbours)
        pairs_key = nearest.reshape(-1)
        # Coverage: each key also goes to the routing centroid that scores it highest.
        own = np.argmax(x @ routing.T, axis=1)  # (n,)
        all_list = np.concatenate([pairs_list, own])
        all_key = np.concatenate([pairs_key, np.arange(n)])
        keep = all_key >= 0
        codes = np.unique(all_list[keep].astype(np.int64) * n + all_key[keep])  # (list, key) pairs, sorted, deduped
        lists, ids = codes // n, codes % n
        offsets = np.searchsorted(lists, np.arange(n_lists + 1)).astype(np.int64)
        return cls(x, routing.astype(np.float32), offsets, ids.astype(np.int64), int(params.get("aware_nprobe", 4)))

    def search(self, x: Any, k: int) -> np.ndarray:
        q = _f32(x)
        k = min(int(k), self.n)
        # Route in query space (L2 to the routing centroids: same distribution as the queries).
        d2 = ((q[:, None, :] - self.routing[None]) ** 2).sum(-1)  # (nq, R)
        probes = np.argpartition(d2, self.nprobe - 1, axis=1)[:, : self.nprobe] if self.nprobe < d2.shape[1] \
            else np.tile(np.arange(d2.shape[1]), (len(q), 1))
        out = np.full((len(q), k), -1, dtype=np.int64)
        scanned = []
        mark = np.zeros(self.n, dtype=bool)  # dedupe the lists' union (cheaper than np.unique here)
        for row, lists in enumerate(probes):
            for r in lists:
                mark[self.ids[self.offsets[r]:self.offsets[r + 1]]] = True
            cand = np.flatnonzero(mark)
            mark[cand] = False
            scanned.append(len(cand))
            scores = self.keys[cand] @ q[row]
            take = min(k, len(cand))
            top = np.argpartition(-scores, take - 1)[:take] if take < len(cand) else np.arange(len(cand))
            out[row, :take] = cand[top]
        self._last_scanned = scanned
        return out

    def scanned(self) -> float:
        """Keys scored per query in the last search (the lists' union), averaged."""
        return float(np.mean(self._last_scanned)) if self._last_scanned else float("nan")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"routing": self.routing, "offsets": self.offsets, "ids": self.ids}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], keys: Any, params: dict[str, Any]) -> QueryRoutedIndex:
        index = cls(keys, arrays["routing"].astype(np.float32), arrays["offsets"].astype(np.int64),
                    arrays["ids"].astype(np.int64), int(params.get("aware_nprobe", 4)))
        assert index.offsets[-1] == len(index.ids) and (index.ids < index.n).all(), "corrupt attention-aware lists"
        return index


KeyANN = FlatIPIndex | FaissANNIndex | QueryRoutedIndex
ANN_KINDS = ("flat", "hnsw", "ivf", "aware")


def build_key_ann(kind: str, keys: Any, *, queries: Any = None, params: dict[str, Any] | None = None) -> KeyANN:
    """An inner-product index over keys (n, D) by kind: flat (exact) | hnsw | ivf | aware (needs queries)."""
    params = params or {}
    if kind == "flat":
        return FlatIPIndex(keys)
    if kind in ("hnsw", "ivf"):
        return FaissANNIndex.build(keys, kind, params)
    if kind == "aware":
        if queries is None:
            raise ValueError("the attention-aware index needs the prefill queries")
        return QueryRoutedIndex.build(keys, queries, params)
    raise ValueError(f"unknown key index kind {kind!r} (valid: {', '.join(ANN_KINDS)})")


def load_key_ann(kind: str, arrays: dict[str, np.ndarray], keys: Any, params: dict[str, Any]) -> KeyANN:
    classes: dict[str, type[KeyANN]] = {
        "flat": FlatIPIndex, "hnsw": FaissANNIndex, "ivf": FaissANNIndex, "aware": QueryRoutedIndex,
    }
    if kind not in classes:
        raise ValueError(f"unknown key index kind {kind!r} (valid: {', '.join(ANN_KINDS)})")
    return classes[kind].from_arrays(arrays, keys, params)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found ∩ exact| / |exact| over rows (ids; -1 entries ignored)."""
    hits = []
    for f, e in zip(found, exact, strict=True):
        e = set(int(i) for i in e if i >= 0)
        if e:
            hits.append(len(e & {int(i) for i in f if i >= 0}) / len(e))
    return float(np.mean(hits)) if hits else float("nan")


__all__ = [
    "ANN_KINDS",
    "FaissANNIndex",
    "FlatIPIndex",
    "KeyANN",
    "KeyCentroids",
    "QueryRoutedIndex",
    "build_key_ann",
    "deserialize",
    "kmeans_labels",
    "load_key_ann",
    "recall_at_k",
    "serialize",
]
