"""RetrievalAttention (Liu et al., 2024) over a cached fixed context (no Django here).

The fixed context's keys split per layer and KV head into a static set (attention sinks and the
recent window, always attended with the user's own tokens) and the middle, searched with an
inner-product ANN index (`indexes.key_index`) for each query's top-k keys. The two partial
attentions merge exactly with log-sum-exp, so only the choice of keys is approximate. Why: a
decoding step reads a few percent of the keys; the attention-aware index routes in query space
because off-the-shelf ANN indexes miss the keys a query attends to. The method is spelled out on
`RetrievalAttention`; measurements in docs/benchmarks-attention.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from indexes.key_index import ANN_KINDS, KeyANN, build_key_ann, load_key_ann
from workers.attention.base import Diagnostics
from workers.attention.reference import (
    AttendStats,
    FixedKV,
    dense_attend,
    merge_partials,
    partial_attention,
    user_partial,
)

if TYPE_CHECKING:
    import torch

FORMAT = "retrieval/1"
ALLOCATIONS = ("uniform", "calibrated")
PROXY_QUERIES = 64  # the prefill's last queries kept with the index (budget calibration)


@dataclass(frozen=True)
class RetrievalConfig:
    index: str = "aware"  # flat | hnsw | ivf | aware
    top_k: int = 64  # retrieved keys per query and head (search time)
    sink: int = 4  # first fixed-context tokens always attended
    window: int = 32  # last fixed-context tokens always attended
    dense_layers: int = 0  # the first layers attend every key (flat attention there; measured)
    sparse_prefill: bool = False  # the user's tokens attend every key (the paper retrieves when decoding)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128  # search time
    ivf_lists: int = 0  # 0: about 4 * sqrt(n)
    nprobe: int = 8  # IVF lists probed (search time)
    aware_lists: int = 0  # 0: about 2 * sqrt(sampled queries)
    aware_neighbours: int = 32  # nearest keys recorded per sampled prefill query
    aware_nprobe: int = 4  # attention-aware lists probed (search time)
    allocation: str = "uniform"  # uniform | calibrated: top_k per head, or the same total split by proxy attention
    kmeans_iters: int = 20
    seed: int = 1234

    BUILD_FIELDS = ("index", "sink", "window", "hnsw_m", "ef_construction", "ivf_lists", "aware_lists",
                    "aware_neighbours", "kmeans_iters", "seed")

    def __post_init__(self) -> None:
        if self.index not in ANN_KINDS:
            raise ValueError(f"unknown retrieval index {self.index!r} (valid: {', '.join(ANN_KINDS)})")
        if self.top_k < 1 or self.sink < 0 or self.window < 0 or self.dense_layers < 0:
            raise ValueError("top_k must be >= 1; sink, window and dense_layers >= 0")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {self.allocation!r} (valid: {', '.join(ALLOCATIONS)})")

    def build_params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.BUILD_FIELDS}

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrievalIndex:
    """Per layer, per KV head: an ANN over the middle keys [sink, N - window) (ids relative to `sink`)."""

    sink: int
    window: int
    anns: list[list[KeyANN | None]]  # [layer][kv head]; None: the head has no middle keys
    proxies: torch.Tensor | None = None  # (L, H, P, D) the prefill's last queries (budget calibration)
    _derived: dict = field(default_factory=dict, repr=False, compare=False)  # search-time helpers, never stored

    def head_budgets(self, fixed: FixedKV, top_k: int, scaling: float) -> torch.Tensor:
        """(L, H) keys to retrieve per layer and query head, `top_k` on average (see the module docstring)."""
        import torch

        key = ("budgets", top_k, float(scaling))
        got = self._derived.get(key)
        if got is not None:
            return got
        if self.proxies is None:
            raise ValueError("calibrated allocation needs an index built with proxy queries: rebuild it")
        n = fixed.n_tokens
        gains = []
        for layer in range(fixed.n_layers):
            keys = fixed.keys[layer]  # (KVH, N, D)
            q = self.proxies[layer].float()  # (H, P, D)
            kvh, (n_heads, n_proxy, d) = keys.shape[0], q.shape
            scores = torch.matmul(q.reshape(kvh, -1, d), keys.transpose(1, 2)).view(n_heads, n_proxy, n) * scaling
            probs = torch.softmax(scores, dim=-1)[..., self.sink:n - self.window]  # (H, P, n_mid)
            gains.append(probs.sort(dim=-1, descending=True).values.mean(1))  # (H, n_mid): mean prob by rank
        gains_t = torch.stack(gains)  # (L, H, n_mid), non-increasing along the last dim
        n_layers, n_heads, n_mid = gains_t.shape
        total = min(top_k * n_layers * n_heads, gains_t.numel())
        threshold = gains_t.reshape(-1).topk(total).values[-1]
        got = (gains_t >= threshold).sum(-1).clamp(min=1, max=n_mid)  # (L, H)
        self._derived[key] = got
        return got

    def static_positions(self, n: int) -> torch.Tensor:
        """The static set's positions (sinks, then the recent window), (S,) int64; cached."""
        import torch

        got = self._derived.get(("static", n))
        if got is None:
            got = self._derived[("static", n)] = torch.cat([torch.arange(self.sink),
                                                            torch.arange(n - self.window, n)])
        return got

    def to_tensors(self) -> dict[str, torch.Tensor]:
        import torch

        out = {"bounds": torch.tensor([self.sink, self.window])}
        if self.proxies is not None:
            out["proxies"] = self.proxies.half()
        for layer, heads in enumerate(self.anns):
            for h, ann in enumerate(heads):
                if ann is None:  # nothing stored: load_index rebuilds the None from the bounds
                    continue
                for name, arr in ann.to_arrays().items():
                    out[f"ann.{layer}.{h}.{name}"] = torch.from_numpy(np.ascontiguousarray(arr))
        return out


def _bounds(n: int, config: RetrievalConfig) -> tuple[int, int]:
    sink = min(config.sink, n)
    window = min(config.window, n - sink)
    return sink, window


def _group_queries(queries: torch.Tensor, layer: int, kv_head: int, n_rep: int) -> np.ndarray:
    """Sampled prefill queries (L, H, P, D) of the query heads reading `kv_head` -> (n_rep * P, D)."""
    q = queries[layer, kv_head * n_rep:(kv_head + 1) * n_rep]  # (n_rep, P, D)
    return q.reshape(-1, q.shape[-1]).float().numpy()


def build_index(fixed: FixedKV, queries: torch.Tensor | None, config: RetrievalConfig,
                progress: Any = None) -> RetrievalIndex:
    """An ANN per layer and KV head over the middle keys. queries: (L, H, P, D) sampled prefill queries."""
    n = fixed.n_tokens
    sink, window = _bounds(n, config)
    anns: list[list[KeyANN | None]] = []
    for layer in range(fixed.n_layers):
        kvh = fixed.keys[layer].shape[0]
        n_rep = queries.shape[1] // kvh if queries is not None else 1
        heads: list[KeyANN | None] = []
        for h in range(kvh):
            middle = fixed.keys[layer][h, sink:n - window]  # (n_mid, D)
            if middle.shape[0] == 0:
                heads.append(None)
                continue
            q = _group_queries(queries, layer, h, n_rep) if queries is not None else None
            heads.append(build_key_ann(config.index, middle, queries=q, params=config.params()))
        anns.append(heads)
        if progress is not None:
            progress(layer + 1, fixed.n_layers)
    proxies = queries[:, :, -PROXY_QUERIES:].float() if queries is not None else None
    return RetrievalIndex(sink=sink, window=window, anns=anns, proxies=proxies)


def load_index(tensors: dict[str, Any], fixed: FixedKV, config: RetrievalConfig) -> RetrievalIndex:
    sink, window = (int(x) for x in tensors["bounds"].tolist())
    assert (sink, window) == _bounds(fixed.n_tokens, config), "the stored index was built for other bounds"
    n = fixed.n_tokens
    anns: list[list[KeyANN | None]] = []
    for layer in range(fixed.n_layers):
        heads: list[KeyANN | None] = []
        for h in range(fixed.keys[layer].shape[0]):
            middle = fixed.keys[layer][h, sink:n - window]
            if middle.shape[0] == 0:
                heads.append(None)
                continue
            prefix = f"ann.{layer}.{h}."
            arrays = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
            heads.append(load_key_ann(config.index, arrays, middle, config.params()))
        anns.append(heads)
    proxies = tensors["proxies"].float() if "proxies" in tensors else None
    return RetrievalIndex(sink=sink, window=window, anns=anns, proxies=proxies)


@dataclass
class RetrievalAttention:
    """The retrieval backend bound to one fixed context (its KV and its per-head ANN indexes).

    The fixed context's keys split in two disjoint sets per layer and KV head:

    - the static set: the first ``sink`` tokens (attention sinks) and the last ``window`` tokens,
      always attended, densely, together with the user's own tokens (causal mask);
    - the middle: an inner-product ANN index over its keys (`indexes.key_index`): ``flat``
      (faiss IndexFlatIP: exact, the baseline), ``hnsw`` / ``ivf`` (faiss ANN, inner-product metric),
      or ``aware``: the attention-aware variant built from the prefill queries' nearest keys and
      routed in query space (queries and keys are differently distributed, which makes off-the-shelf
      ANN indexes miss the keys a query attends to; measured in docs/benchmarks-attention.md).

    Per query (each query head searches its KV head's index) the ``top_k`` keys of largest q·k are
    retrieved and attended; the two partial attentions (static + user, retrieved) are merged
    EXACTLY with log-sum-exp (`workers.attention.reference.merge_partials`): the result is softmax
    attention over the union, nothing approximated but the choice of keys. With ``top_k`` at least
    the middle's size every key is attended and the output equals full attention (tested).

    Decoding step (one query row), batched over the query heads: ``flat`` is exact maximum inner
    product search done as one batched matmul over the middle keys (query heads grouped by KV
    head, no copies) and one `topk`; the top-k scores are the attention logits, so only the
    retrieved *values* are gathered. The other kinds search their faiss / attention-aware index per
    KV head (all query heads of the group in one call), then gather the retrieved keys and values.
    The static set's logits join the retrieved ones in one softmax.

    Budget allocation (``allocation``, search time): ``uniform`` retrieves ``top_k`` keys for every
    layer and query head; ``calibrated`` keeps the same total (``top_k`` per layer and head on
    average) but splits it by the attention of the context's last tokens (the proxy queries kept
    with the index): with each head's keys ranked by their mean attention probability over the
    proxies, a key's marginal gain is its mean probability, and the budget goes to the largest
    gains over all layers and heads (the optimum for these concave recall curves). Flat heads get
    more keys, peaked heads fewer; each head retrieves its own number (>= 1), the measured
    ``keys_fraction`` counts what was attended.
    """

    fixed: FixedKV
    index: RetrievalIndex
    config: RetrievalConfig
    diagnostics: Diagnostics | None = None
    stats: AttendStats = field(default_factory=AttendStats)
    scanned: float = 0.0  # keys scored by the ANN searches, summed over decode calls and heads
    name: str = "retrieval"

    def retrieve(self, layer: int, q: torch.Tensor, k: int) -> torch.Tensor:
        """q (H, Q, D) -> middle-key ids (H, Q, k), -1 where the index found fewer."""
        import torch

        n_heads, q_len, d = q.shape
        anns = self.index.anns[layer]
        n_rep = n_heads // len(anns)
        if self.config.index == "flat":  # exact MIPS as a batched matmul (what IndexFlatIP computes)
            fk, n = self.fixed.keys[layer], self.fixed.n_tokens
            middle = fk[:, self.index.sink:n - self.index.window]  # (KVH, n_mid, D), a view
            scores = torch.matmul(q.float().reshape(len(anns), n_rep * q_len, d), middle.transpose(1, 2))
            if q_len == 1:
                self.scanned += float(middle.shape[1] * n_heads)
            return scores.topk(min(k, middle.shape[1]), dim=-1).indices.view(n_heads, q_len, -1)
        out = []
        for g, ann in enumerate(anns):
            assert ann is not None, "a head without middle keys has no index to search"
            x = q[g * n_rep:(g + 1) * n_rep].reshape(-1, d).float().numpy()  # (n_rep * Q, D)
            ids = ann.search(x, k)  # (n_rep * Q, k')
            if ids.shape[1] < k:
                ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
            if q_len == 1:
                self.scanned += ann.scanned() * n_rep
            out.append(torch.from_numpy(ids.astype(np.int64)).view(n_rep, q_len, k))
        return torch.cat(out)  # (H, Q, k)

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float,
    ) -> torch.Tensor:
        """query (1, H, Q, D); key/value (1, KVH, U, D) the user's tokens; -> (1, H, Q, D)."""
        import torch

        q = query[0]  # (H, Q, D)
        n_heads, q_len, _ = q.shape
        n_rep = n_heads // key.shape[1]
        n = self.fixed.n_tokens
        if layer < self.config.dense_layers or (q_len > 1 and not self.config.sparse_prefill):
            self.stats.add(q_len, float(n), n)
            return dense_attend(self.fixed, layer, query, key, value, mask, scaling)
        n_mid = n - self.index.sink - self.index.window
        budgets = self._budgets(layer, scaling)  # None (uniform) or (H,) keys per query head
        k = min(n_mid, self.config.top_k if budgets is None else int(budgets.max()))
        if q_len == 1 and 0 < k < n_mid and self.diagnostics is None:
            return self._decode_step(layer, q, key, value, mask, scaling, k, budgets).to(query.dtype)
        sink, window = self.index.sink, self.index.window
        fk, fv = self.fixed.keys[layer], self.fixed.values[layer]  # (KVH, N, D)
        kv_of_head = torch.arange(n_heads) // n_rep

        # 1. static set (sinks + recent window), dense.
        static = torch.cat([torch.arange(sink), torch.arange(n - window, n)])  # (S,)
        parts = [partial_attention(q, fk[:, static], fv[:, static], scaling)] if len(static) else []  # (KVH, S, D)
        # 2. retrieved middle keys (all of them when top_k covers the middle: exact).
        if n_mid > 0:
            if k >= n_mid and budgets is None:
                ids = torch.arange(n_mid).expand(n_heads, q_len, n_mid)  # (H, Q, n_mid)
            else:
                ids = self.retrieve(layer, q, k)  # (H, Q, k)
            if budgets is not None:  # keep each head's best budgets[h] of the retrieved keys
                rk = fk[kv_of_head[:, None, None], ids.clamp(min=0) + sink]  # (H, Q, k, D)
                score = torch.einsum("hqd,hqkd->hqk", q.float(), rk.float()).masked_fill(ids < 0, float("-inf"))
                order = score.sort(dim=-1, descending=True)
                ids = ids.gather(-1, order.indices)
                rank = torch.arange(ids.shape[-1])
                ids = ids.masked_fill((rank >= budgets[:, None, None]) | ~torch.isfinite(order.values), -1)
            valid = ids >= 0
            absolute = ids.clamp(min=0) + sink
            rk = fk[kv_of_head[:, None, None], absolute]  # (H, Q, k, D): only the retrieved keys are read
            rv = fv[kv_of_head[:, None, None], absolute]
            parts.append(partial_attention(q, rk, rv, scaling, valid))
            retrieved = valid.sum(-1).float()  # (H, Q)
        else:
            retrieved = torch.zeros(n_heads, q_len)
        # 3. the user's own tokens, dense and causal; then the exact merge.
        user = user_partial(q, key, value, mask, scaling)
        out, _ = merge_partials([*parts, user])
        self.stats.add(q_len, float(retrieved.mean()) + len(static), n)
        if self.diagnostics is not None and q_len == 1:
            hits = torch.zeros(n_heads, q_len, n, dtype=torch.int32)
            hits[..., static] = 1
            if n_mid > 0:
                hits.scatter_add_(-1, absolute, valid.to(torch.int32))
            attended = hits > 0  # (H, Q, N)
            if n_mid > 0:
                # ANN recall: retrieved ids vs the exact top-k of q·k over the middle keys.
                k_exact = min(k, n_mid)
                grouped = q.float().reshape(fk.shape[0], n_rep * q_len, -1)  # (KVH, n_rep * Q, D)
                mid_scores = torch.matmul(grouped, fk[:, sink:n - window].float().transpose(1, 2))
                exact = mid_scores.view(n_heads, q_len, n_mid).topk(k_exact, dim=-1).indices  # (H, Q, k), best first
                per_head = torch.full((n_heads,), k_exact) if budgets is None else budgets.clamp(max=k_exact)
                hit = torch.zeros(n_heads, q_len, n_mid, dtype=torch.bool)
                hit.scatter_(-1, exact, (torch.arange(k_exact) < per_head[:, None, None]).expand_as(exact))
                found = hit.gather(-1, ids.clamp(min=0)) & valid  # (H, Q, k)
                recall = found.sum(-1).float() / per_head[:, None].float()  # (H, Q)
                self.diagnostics.add("ann_recall", float(recall.sum()), n_heads * q_len)
            self.diagnostics.observe(q, fk, fv, user, attended, out, scaling)
        return out[None].to(query.dtype)


    def _budgets(self, layer: int, scaling: float) -> torch.Tensor | None:
        """Keys to retrieve per query head in this layer, (H,), or None when every head retrieves top_k."""
        if self.config.allocation == "uniform":
            return None
        return self.index.head_budgets(self.fixed, self.config.top_k, scaling)[layer]

    def _decode_step(
        self, layer: int, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float, k: int, budgets: torch.Tensor | None,
    ) -> torch.Tensor:
        """One decoding row, q (H, 1, D) -> (1, H, 1, D): static set + k retrieved keys per head, one softmax.

        budgets (H,) (calibrated allocation): head h keeps its best budgets[h] <= k retrieved keys.
        """
        import torch

        fk, fv = self.fixed.keys[layer], self.fixed.values[layer]  # (KVH, N, D)
        kvh, n, d = fk.shape
        n_heads = q.shape[0]
        n_rep = n_heads // kvh
        sink, window = self.index.sink, self.index.window
        grouped = q.reshape(kvh, n_rep, d).float()  # (KVH, n_rep, D): the query heads of each KV head
        heads = torch.arange(kvh)[:, None, None] * n  # (KVH, 1, 1) flat offset of each KV head
        if self.config.index == "flat":
            # Exact MIPS: one batched matmul over the middle keys (a view: nothing copied), one topk;
            # the top-k scores are the retrieved keys' logits, so only their values are gathered.
            mid_scores = torch.matmul(grouped, fk[:, sink:n - window].transpose(1, 2))  # (KVH, n_rep, n_mid)
            top_scores, ids = mid_scores.topk(k, dim=-1, sorted=budgets is not None)  # (KVH, n_rep, k)
            flat_ids = (ids + sink + heads).reshape(-1)
            ret_logits = top_scores.reshape(n_heads, k) * scaling
            valid = None
        else:
            ids = self.retrieve(layer, q, k).view(kvh, n_rep, k)  # -1 where the index found fewer
            valid = (ids >= 0).reshape(n_heads, k)
            flat_ids = (ids.clamp(min=0) + sink + heads).reshape(-1)
            ret_k = fk.reshape(kvh * n, d).index_select(0, flat_ids).view(n_heads, k, d)
            ret_logits = torch.matmul(ret_k, q.reshape(n_heads, d, 1)).view(n_heads, k) * scaling
            ret_logits.masked_fill_(~valid, float("-inf"))
            if budgets is not None:  # best first, as the flat topk returns them
                ret_logits, order = ret_logits.sort(dim=-1, descending=True)
                flat_ids = flat_ids.view(n_heads, k).gather(1, order).reshape(-1)
                valid = torch.isfinite(ret_logits)
        if budgets is not None:
            keep = torch.arange(k)[None] < budgets[:, None]  # (H, k): each head's own budget
            valid = keep if valid is None else valid & keep
            ret_logits = ret_logits.masked_fill(~keep, float("-inf"))
        ret_v = fv.reshape(kvh * n, d).index_select(0, flat_ids).view(n_heads, k, d)  # (H, k, D)
        static = self.index.static_positions(n)  # (S,)
        st_k, st_v = fk.index_select(1, static), fv.index_select(1, static)  # (KVH, S, D), S = sink + window
        st_logits = torch.matmul(grouped, st_k.transpose(1, 2)).reshape(n_heads, -1) * scaling  # (H, S)
        logits = torch.cat([st_logits, ret_logits], dim=-1)  # (H, S + k): one softmax over both
        lse = torch.logsumexp(logits, dim=-1)  # (H,)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        probs = torch.exp(logits - safe[:, None])
        s = st_logits.shape[1]
        fixed_out = (torch.matmul(probs[:, :s].view(kvh, n_rep, s), st_v).view(n_heads, d)
                     + torch.matmul(probs[:, None, s:], ret_v).view(n_heads, d))  # (H, D)
        user = user_partial(q, key, value, mask, scaling)
        out, _ = merge_partials([(fixed_out[:, None], lse[:, None]), user])  # (H, 1, D)
        retrieved = float(valid.sum()) / n_heads if valid is not None else float(k)
        self.stats.add(1, retrieved + s, n)
        return out[None]


class RetrievalBackend:
    """Registry entry: builds, stores and loads the per-head ANN indexes; binds them to a context."""

    name = "retrieval"
    needs_index = True
    config_class = RetrievalConfig

    def __init__(self, config: RetrievalConfig | None = None) -> None:
        self.config = config or RetrievalConfig()

    def build(self, fixed: FixedKV, queries: torch.Tensor, progress: Any = None) -> RetrievalIndex:
        return build_index(fixed, queries, self.config, progress)

    def to_tensors(self, index: RetrievalIndex) -> dict[str, Any]:
        return index.to_tensors()

    def from_tensors(self, tensors: dict[str, Any], fixed: FixedKV) -> RetrievalIndex:
        return load_index(tensors, fixed, self.config)

    def state(
        self, fixed: FixedKV, index: RetrievalIndex, diagnostics: Diagnostics | None = None
    ) -> RetrievalAttention:
        return RetrievalAttention(fixed=fixed, index=index, config=self.config, diagnostics=diagnostics)


__all__ = ["FORMAT", "RetrievalAttention", "RetrievalBackend", "RetrievalConfig", "RetrievalIndex", "build_index",
           "load_index"]
