"""Squeezed Attention (Hooper et al., 2024) over a cached fixed context (no Django here).

Offline, the fixed context's keys are clustered per layer and KV head (`build_index`); at each
decoding step a query scores the cluster centroids and attends, exactly, only the keys of the
clusters whose estimated attention clears a calibrated threshold, plus the recent window and the
user's own tokens, merged exactly with log-sum-exp. Why: a step then reads a small share of a long
cached context instead of all of it. The method is spelled out on `SqueezedAttention`; options in
docs/attention.md, measurements in docs/benchmarks-attention.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from indexes.key_index import KeyCentroids
from workers.attention.base import Diagnostics
from workers.attention.reference import (
    AttendStats,
    FixedKV,
    dense_attend,
    merge_partials,
    partial_attention,
    repeat_kv,
    user_partial,
)

if TYPE_CHECKING:
    import torch

FORMAT = "squeezed/1"
CALIBRATIONS = ("global", "layer", "head")


@dataclass(frozen=True)
class SqueezedConfig:
    cluster_fraction: float = 0.05  # clusters per clustered key
    keep_fraction: float = 0.10  # calibrated share of clustered keys attended (search time)
    window: int = 64  # last fixed-context tokens always attended
    sink: int = 4  # first fixed-context tokens always attended (attention sinks; not in the paper)
    dense_layers: int = 0  # the first layers attend every key (flat attention there; measured)
    # The question's own rows attend every fixed key: measured on 12 L-Eval questions, sending
    # them through the centroid lookup cut answer agreement from 0.93 to 0.53 (4k) and from 0.95
    # to 0.92 (8k), and that prefill took 2.1-2.6x as long on CPU (docs/benchmarks-attention.md).
    sparse_prefill: bool = False
    calibration: str = "global"  # global | layer | head: one threshold, one per layer, one per (layer, head)
    # Second-order cluster score: log S_i + s^2 |q|^2 var_i / 2, var_i the cluster's mean squared key
    # deviation per dimension (E[exp(s q.k)] for keys spread around C_i, not exp(s q.C_i)).
    spread: bool = False
    # Estimate the clusters NOT kept from their centroids instead of dropping them: each adds
    # N_i exp(s q.C_i) to the softmax denominator and that mass times its mean value V_i to the
    # numerator (a first-order estimate of the tail the exact keys leave out; with spread=true the
    # second-order score). Costs one mean value per cluster, counted in the keys attended.
    estimate_rest: bool = False
    n_proxy: int = 64  # last fixed-context tokens used as proxy queries for calibration
    hierarchical: bool = False
    coarse_fraction: float = 0.125  # coarse clusters per fine cluster (hierarchical)
    coarse_keep_fraction: float = 0.30  # share of keys under the kept coarse clusters (search time)
    kmeans_iters: int = 20
    seed: int = 1234

    # What the stored index depends on; the rest are applied at search time (no rebuild).
    BUILD_FIELDS = (
        "cluster_fraction", "window", "sink", "n_proxy", "hierarchical", "coarse_fraction", "kmeans_iters", "seed",
    )

    def __post_init__(self) -> None:
        if not 0 < self.cluster_fraction <= 1:
            raise ValueError(f"cluster_fraction must be in (0, 1], got {self.cluster_fraction}")
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if not 0 < self.coarse_keep_fraction <= 1:
            raise ValueError(f"coarse_keep_fraction must be in (0, 1], got {self.coarse_keep_fraction}")
        if self.window < 0 or self.sink < 0 or self.dense_layers < 0 or self.n_proxy < 1:
            raise ValueError("window, sink and dense_layers must be >= 0 and n_proxy >= 1")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r} (valid: {', '.join(CALIBRATIONS)})")
        if self.spread and self.hierarchical:
            raise ValueError("spread=true is for one level (hierarchical=false)")
        if self.calibration != "global" and self.hierarchical:
            raise ValueError("per-layer or per-head calibration is for one level (hierarchical=false)")

    def build_params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.BUILD_FIELDS}


@dataclass
class SqueezedIndex:
    """Per layer: KeyCentroids per KV head (stacked), the clustered span, the proxy queries."""

    start: int  # keys [start, start + n_clustered) are clustered; the sinks before, the window after
    n_clustered: int
    centroids: list[torch.Tensor]  # per layer (KVH, C, D)
    log_sizes: list[torch.Tensor]  # per layer (KVH, C); -inf for empty clusters
    labels: list[torch.Tensor]  # per layer (KVH, n_clustered) int64
    proxies: torch.Tensor  # (L, H, P, D) proxy queries (the context's last tokens)
    coarse: list[torch.Tensor] | None = None  # per layer (KVH, C1, D)
    coarse_log_sizes: list[torch.Tensor] | None = None  # per layer (KVH, C1)
    parent: list[torch.Tensor] | None = None  # per layer (KVH, C) int64
    # Derived at search time, never stored: decode layouts per (layer, N), calibrations per setting.
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def hierarchical(self) -> bool:
        return self.coarse is not None

    def coarse_levels(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(coarse, coarse_log_sizes, parent) of a hierarchical index, which has all three."""
        assert self.coarse is not None and self.coarse_log_sizes is not None and self.parent is not None
        return self.coarse, self.coarse_log_sizes, self.parent

    def decode_layout(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every fixed key of every KV head, as (flat position into keys.view(KVH * N, D), cluster id).

        Cluster ids are global over the layer's KV heads: head g's cluster i is g * (C + 1) + i,
        and g * (C + 1) + C is head g's static set (sinks + recent window), always attended.
        Positions ascend within each KV head, so a gather of any subset reads memory in order.
        Computed once per layer and cached on the index.
        """
        import torch

        key = ("layout", layer, n)
        got = self._derived.get(key)
        if got is None:
            labels = self.labels[layer]  # (KVH, Nc)
            kvh, nc = labels.shape
            c1 = self.centroids[layer].shape[1] + 1
            start = self.start
            heads = torch.arange(kvh)[:, None]  # (KVH, 1)
            local = torch.arange(n).expand(kvh, n)  # (KVH, N)
            cluster = torch.full((kvh, n), 0, dtype=torch.long) + heads * c1 + (c1 - 1)  # static by default
            cluster[:, start:start + nc] = labels + heads * c1
            got = ((local + heads * n).reshape(-1).contiguous(), cluster.reshape(-1).contiguous())
            self._derived[key] = got
        return got

    # -------------------------------------------------------------- persistence

    def to_tensors(self) -> dict[str, torch.Tensor]:
        import torch

        out: dict[str, torch.Tensor] = {"span": torch.tensor([self.start, self.n_clustered]),
                                        "proxies": self.proxies.half()}
        for i in range(len(self.centroids)):
            out[f"centroids.{i}"] = self.centroids[i]
            out[f"log_sizes.{i}"] = self.log_sizes[i]
            out[f"labels.{i}"] = self.labels[i].to(torch.int32)
            if self.hierarchical:
                coarse, coarse_log_sizes, parent = self.coarse_levels()
                out[f"coarse.{i}"] = coarse[i]
                out[f"coarse_log_sizes.{i}"] = coarse_log_sizes[i]
                out[f"parent.{i}"] = parent[i].to(torch.int32)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], n_layers: int) -> SqueezedIndex:
        import torch

        hier = "coarse.0" in t
        index = cls(
            start=int(t["span"][0]),
            n_clustered=int(t["span"][1]),
            centroids=[t[f"centroids.{i}"] for i in range(n_layers)],
            log_sizes=[t[f"log_sizes.{i}"] for i in range(n_layers)],
            labels=[t[f"labels.{i}"].to(torch.int64) for i in range(n_layers)],
            proxies=t["proxies"].float(),
            coarse=[t[f"coarse.{i}"] for i in range(n_layers)] if hier else None,
            coarse_log_sizes=[t[f"coarse_log_sizes.{i}"] for i in range(n_layers)] if hier else None,
            parent=[t[f"parent.{i}"].to(torch.int64) for i in range(n_layers)] if hier else None,
        )
        assert all(lab.shape[1] == index.n_clustered for lab in index.labels), "labels do not match the context"
        return index


def _stack_heads(arrays: list[np.ndarray | None]) -> np.ndarray:
    """np.stack of per-head arrays that a hierarchical build always fills."""
    present = [a for a in arrays if a is not None]
    assert len(present) == len(arrays)
    return np.stack(present)


def build_index(fixed: FixedKV, proxies: torch.Tensor, config: SqueezedConfig, progress: Any = None) -> SqueezedIndex:
    """Cluster every layer's and KV head's keys. proxies: (L, H, P, D) queries of the context's last tokens."""
    import torch

    n = fixed.n_tokens
    sink = min(config.sink, n - 1)
    window = min(config.window, n - 1 - sink)
    n_clustered = n - window - sink
    assert n_clustered >= 1
    n_clusters = max(1, round(config.cluster_fraction * n_clustered))
    n_coarse = max(1, round(config.coarse_fraction * n_clusters)) if config.hierarchical else None
    centroids, log_sizes, labels, coarse, coarse_log_sizes, parent = [], [], [], [], [], []
    for layer in range(fixed.n_layers):
        per_head = [
            KeyCentroids.build(fixed.keys[layer][h, sink:sink + n_clustered], n_clusters, niter=config.kmeans_iters,
                               seed=config.seed, n_coarse=n_coarse)
            for h in range(fixed.keys[layer].shape[0])
        ]
        centroids.append(torch.from_numpy(np.stack([c.centroids for c in per_head])))  # (KVH, C, D)
        log_sizes.append(torch.from_numpy(np.log(np.stack([c.sizes for c in per_head]).astype(np.float32))))
        labels.append(torch.from_numpy(np.stack([c.labels for c in per_head])))  # (KVH, n_clustered)
        if n_coarse:
            coarse.append(torch.from_numpy(_stack_heads([c.coarse for c in per_head])))  # (KVH, C1, D)
            coarse_sizes = _stack_heads([c.coarse_sizes for c in per_head])
            coarse_log_sizes.append(torch.from_numpy(np.log(coarse_sizes.astype(np.float32))))
            parent.append(torch.from_numpy(_stack_heads([c.parent for c in per_head])))  # (KVH, C)
        if progress is not None:
            progress(layer + 1, fixed.n_layers)
    return SqueezedIndex(
        start=sink, n_clustered=n_clustered, centroids=centroids, log_sizes=log_sizes, labels=labels,
        proxies=proxies[:, :, -config.n_proxy:].float(),
        coarse=coarse or None, coarse_log_sizes=coarse_log_sizes or None, parent=parent or None,
    )


# ---------------------------------------------------------------------------- scoring


def cluster_spread(index: SqueezedIndex, fixed: FixedKV, layer: int) -> torch.Tensor:
    """(KVH, C): each cluster's mean squared deviation of its keys from the centroid, per dimension.

    Derived from the stored keys and labels (no index format change) once per layer, cached on
    the index. Empty clusters get 0.
    """
    import torch

    key = ("spread", layer)
    got = index._derived.get(key)
    if got is None:
        keys = fixed.keys[layer][:, index.start:index.start + index.n_clustered].float()  # (KVH, Nc, D)
        labels = index.labels[layer]  # (KVH, Nc)
        cents = index.centroids[layer].float()  # (KVH, C, D)
        dev = ((keys - cents.gather(1, labels[..., None].expand_as(keys))) ** 2).mean(-1)  # (KVH, Nc)
        total = torch.zeros(cents.shape[:2]).scatter_add_(1, labels, dev)
        count = torch.zeros(cents.shape[:2]).scatter_add_(1, labels, torch.ones_like(dev))
        got = index._derived[key] = total / count.clamp(min=1)
    return got


def cluster_value_means(index: SqueezedIndex, fixed: FixedKV, layer: int) -> torch.Tensor:
    """(KVH, C, D): each cluster's mean value vector (0 for empty clusters), cached on the index."""
    import torch

    key = ("value_means", layer)
    got = index._derived.get(key)
    if got is None:
        values = fixed.values[layer][:, index.start:index.start + index.n_clustered].float()  # (KVH, Nc, D)
        labels = index.labels[layer]  # (KVH, Nc)
        kvh, n_clusters = index.centroids[layer].shape[:2]
        total = torch.zeros(kvh, n_clusters, values.shape[-1]).scatter_add_(
            1, labels[..., None].expand_as(values), values)
        count = torch.zeros(kvh, n_clusters).scatter_add_(1, labels, torch.ones(labels.shape))
        got = index._derived[key] = total / count.clamp(min=1)[..., None]
    return got


def _spread_term(q: torch.Tensor, spread: torch.Tensor, scaling: float) -> torch.Tensor:
    """s^2 |q|^2 var_i / 2 for q (G, Q, D) and spread (G, C) -> (G, Q, C)."""
    return 0.5 * scaling**2 * (q.float() ** 2).sum(-1)[..., None] * spread[:, None, :]


def _log_scores(q: torch.Tensor, cents: torch.Tensor, log_sizes: torch.Tensor, scaling: float,
                log_den: torch.Tensor | None = None, spread: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """log S_i for q (H, Q, D) vs per-head centroids (H, C, D) -> (log S (H, Q, C), log denominator (H, Q))."""
    import torch

    s = torch.einsum("hqd,hcd->hqc", q.float(), cents) * scaling  # (H, Q, C)
    if spread is not None:
        s = s + _spread_term(q, spread, scaling)
    if log_den is None:
        log_den = torch.logsumexp(s + log_sizes[:, None, :], dim=-1)  # (H, Q)
    return s - log_den[..., None], log_den


def _weighted_quantile_threshold(log_s: torch.Tensor, sizes: torch.Tensor, keep: float, total: float) -> float:
    """The log τ at which the keys of clusters with log S ≥ log τ are `keep` of `total` keys."""
    import torch

    flat_s, flat_n = log_s.reshape(-1), sizes.reshape(-1).double()
    order = torch.argsort(flat_s, descending=True)
    cum = torch.cumsum(flat_n[order], 0) / total
    idx = int(torch.searchsorted(cum, torch.tensor([keep], dtype=cum.dtype))[0])
    idx = min(idx, len(order) - 1)
    return float(flat_s[order[idx]])


@dataclass
class Calibration:
    log_tau: float  # fine threshold (log space); -inf keeps everything
    log_tau_coarse: float = -math.inf
    per_head: torch.Tensor | None = None  # (L, H) fine thresholds when calibrated per layer or head

    def threshold(self, layer: int) -> float | torch.Tensor:
        """The fine threshold for a layer: a number, or (H,) per query head."""
        return self.log_tau if self.per_head is None else self.per_head[layer]


def _layer_spread(index: SqueezedIndex, fixed: FixedKV | None, layer: int, n_rep: int) -> torch.Tensor | None:
    """(H, C) cluster spreads for the query heads of a layer, or None without a fixed KV."""
    if fixed is None:
        return None
    return repeat_kv(cluster_spread(index, fixed, layer)[None, :, :, None], n_rep)[0, :, :, 0]


def _per_head_thresholds(index: SqueezedIndex, config: SqueezedConfig, scaling: float, n_rep: int,
                         fixed: FixedKV | None = None) -> torch.Tensor:
    """(L, H) thresholds, each keeping `keep_fraction` of the clustered keys on its own proxies (or its layer's)."""
    import torch

    out = []
    for layer in range(len(index.centroids)):
        cents = repeat_kv(index.centroids[layer][None], n_rep)[0]  # (H, C, D)
        log_sz = repeat_kv(index.log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C)
        log_s, _ = _log_scores(index.proxies[layer], cents, log_sz, scaling,
                               spread=_layer_spread(index, fixed, layer, n_rep))  # (H, P, C)
        sizes = log_sz.exp()[:, None, :].expand_as(log_s)
        n_heads, n_proxy = log_s.shape[:2]
        if config.calibration == "layer":
            tau = _weighted_quantile_threshold(log_s, sizes, config.keep_fraction,
                                               float(n_heads * n_proxy * index.n_clustered))
            out.append(torch.full((n_heads,), tau))
        else:
            out.append(torch.tensor([
                _weighted_quantile_threshold(
                    log_s[h], sizes[h], config.keep_fraction, float(n_proxy * index.n_clustered)
                )
                for h in range(n_heads)]))
    return torch.stack(out).float()  # (L, H)


def calibrate(index: SqueezedIndex, config: SqueezedConfig, scaling: float, n_rep: int,
              fixed: FixedKV | None = None) -> Calibration:
    """Thresholds from the proxy queries (see the module docstring); `fixed` for `spread=True`."""
    import torch

    if config.keep_fraction >= 1.0:
        return Calibration(-math.inf, -math.inf)
    n_layers = len(index.centroids)
    n_proxy = index.proxies.shape[2]
    total = float(n_layers * index.proxies.shape[1] * n_proxy * index.n_clustered)
    with torch.no_grad():
        if config.calibration != "global" and not index.hierarchical:
            return Calibration(-math.inf, per_head=_per_head_thresholds(index, config, scaling, n_rep, fixed))
        if not index.hierarchical:
            scores, sizes = [], []
            for layer in range(n_layers):
                cents = repeat_kv(index.centroids[layer][None], n_rep)[0]  # (H, C, D)
                log_sz = repeat_kv(index.log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C)
                log_s, _ = _log_scores(index.proxies[layer], cents, log_sz, scaling,
                                       spread=_layer_spread(index, fixed, layer, n_rep))  # (H, P, C)
                scores.append(log_s)
                sizes.append(log_sz.exp()[:, None, :].expand_as(log_s))
            return Calibration(_weighted_quantile_threshold(torch.stack(scores), torch.stack(sizes),
                                                            config.keep_fraction, total))
        # Hierarchical: τ1 on the coarse level, then τ2 on the fine scores under kept coarse clusters.
        coarse, coarse_log_sizes, parents = index.coarse_levels()
        coarse_scores, coarse_sizes, dens = [], [], []
        for layer in range(n_layers):
            cc = repeat_kv(coarse[layer][None], n_rep)[0]  # (H, C1, D)
            log_csz = repeat_kv(coarse_log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C1)
            log_s1, log_den = _log_scores(index.proxies[layer], cc, log_csz, scaling)
            coarse_scores.append(log_s1)
            coarse_sizes.append(log_csz.exp()[:, None, :].expand_as(log_s1))
            dens.append(log_den)
        log_tau1 = _weighted_quantile_threshold(torch.stack(coarse_scores), torch.stack(coarse_sizes),
                                                max(config.coarse_keep_fraction, config.keep_fraction), total)
        fine_scores, fine_sizes = [], []
        for layer in range(n_layers):
            cents = repeat_kv(index.centroids[layer][None], n_rep)[0]
            log_sz = repeat_kv(index.log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]
            parent = repeat_kv(parents[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C)
            log_s2, _ = _log_scores(index.proxies[layer], cents, log_sz, scaling, log_den=dens[layer])
            under = (coarse_scores[layer] >= log_tau1).gather(-1, parent[:, None, :].expand_as(log_s2))
            fine_scores.append(log_s2.masked_fill(~under, -math.inf))
            fine_sizes.append(log_sz.exp()[:, None, :].expand_as(log_s2))
        log_tau2 = _weighted_quantile_threshold(torch.stack(fine_scores), torch.stack(fine_sizes),
                                                config.keep_fraction, total)
        return Calibration(log_tau2, log_tau1)


# ---------------------------------------------------------------------------- online


@dataclass
class SqueezedAttention:
    """The squeezed backend bound to one fixed context (its KV, its index, calibrated thresholds).

    Offline, per layer and KV head (`build_index`):
      the fixed context's keys outside the recent window are clustered by faiss k-means on their
      L2-normalised directions into ``cluster_fraction * N`` clusters (default 5%); each centroid
      C_i is the mean of its cluster's unnormalised keys and N_i its size. Optional second level:
      coarse centroids over the fine ones (`indexes.key_index.KeyCentroids`).

    Online, for a query q of one query head (`SqueezedAttention.attend`):
      S_i = exp(s q·C_i) / Σ_j N_j exp(s q·C_j)  (s = the attention scale)
    estimates the attention probability of one key of cluster i. Clusters with S_i ≥ τ are kept
    and their keys attended *exactly*; the recent window of the fixed context (its last ``window``
    tokens) is always attended; the user's own tokens (everything after the fixed context) are
    attended densely with the causal mask. The three parts are merged exactly with log-sum-exp.

    Threshold: by default (``calibration="global"``) τ is one number for all layers and heads (S_i
    is a probability, comparable across heads: flat heads keep many clusters, peaked heads few). It
    is calibrated from the last ``n_proxy`` tokens of the fixed context used as proxy queries: the
    size-weighted quantile of their S_i such that ``keep_fraction`` (default 10%) of the clustered
    keys pass, averaged over layers, heads and proxies. ``calibration="layer"`` / ``"head"``
    calibrate one τ per layer / per (layer, query head) the same way, each keeping
    ``keep_fraction`` of its keys on the proxies. At decode time the real share differs per
    question; it is measured (`stats`), not assumed.

    Decoding step (one query row): the centroid scores of the 9 query heads are one batched matmul
    per layer against the (KVH, C, D) centroids (no per-head copies), the kept clusters of the
    query heads sharing a KV head are united, and the keys of the union plus the static keys
    (sinks, window) are read with ONE `index_select` from a per-layer layout computed once per
    index (the flat key positions in cluster order per KV head); each query head then masks the
    keys of clusters it did not keep, so every head attends exactly its own clusters.

    Hierarchical lookup (``hierarchical=True``): coarse centroids are scored first with their own
    calibrated threshold τ1 (keeping ``coarse_keep_fraction`` of the keys); only fine clusters
    under a kept coarse cluster are scored, against the coarse level's denominator
    Σ_j N_j exp(s q·C1_j), with τ2 calibrated the same way. On this CPU the fine scores are computed
    for every cluster and masked (one small matmul is cheaper than a gather); `lookups` counts the
    centroids a lookup-bound kernel would compare.

    Keep-everything setting: ``keep_fraction=1.0`` (τ = 0: every cluster passes) equals full
    attention up to float rounding (tested).
    """

    fixed: FixedKV
    index: SqueezedIndex
    config: SqueezedConfig
    calibration: Calibration | None = None
    diagnostics: Diagnostics | None = None
    stats: AttendStats = field(default_factory=AttendStats)
    lookups: float = 0.0  # centroids compared, summed over decode calls and heads
    name: str = "squeezed"

    def _calibrated(self, scaling: float, n_rep: int) -> Calibration:
        if self.calibration is None:
            # Thresholds depend on the search-time budget only: cached on the index, shared by questions.
            c = self.config
            key = (
                "calibration", c.keep_fraction, c.coarse_keep_fraction, c.calibration, c.spread, float(scaling), n_rep,
            )
            got = self.index._derived.get(key)
            if got is None:
                got = self.index._derived[key] = calibrate(self.index, c, scaling, n_rep,
                                                           self.fixed if c.spread else None)
            self.calibration = got
        return self.calibration

    def cluster_scores(self, layer: int, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """s·q·Cᵢ (+ the spread term) for q (H, Q, D) -> (KVH, n_rep * Q, C).

        One batched matmul per layer: the query heads of a KV head share its centroids (no copies).
        The flat (non-hierarchical) selection and the estimate of the rest read the same logits,
        so `attend` computes them once and hands them to both.
        """
        import torch

        cents = self.index.centroids[layer]  # (KVH, C, D)
        kvh, _, d = cents.shape
        flat_q = q.float().reshape(kvh, -1, d)
        s = torch.matmul(flat_q, cents.transpose(1, 2)) * scaling
        if self.config.spread:
            s = s + _spread_term(flat_q, cluster_spread(self.index, self.fixed, layer), scaling)
        return s

    def select_clusters(self, layer: int, q: torch.Tensor, scaling: float,
                        centroid_scores: torch.Tensor | None = None) -> torch.Tensor:
        """q (H, Q, D) -> kept clusters (H, Q, C) bool; `centroid_scores`: `cluster_scores` if already computed."""
        import torch

        kvh = self.index.centroids[layer].shape[0]
        n_heads, q_len, _ = q.shape
        n_rep = n_heads // kvh
        cal = self._calibrated(scaling, n_rep)
        if not self.index.hierarchical:
            log_sz = self.index.log_sizes[layer][:, None, :]  # (KVH, 1, C); -inf for empty clusters
            s = centroid_scores if centroid_scores is not None else self.cluster_scores(layer, q, scaling)
            log_s = s - torch.logsumexp(s + log_sz, dim=-1, keepdim=True)  # (KVH, n_rep * Q, C)
            tau = cal.threshold(layer)
            if isinstance(tau, float):
                keep = log_s >= tau
            else:  # per query head: (H,) -> (KVH, n_rep * Q, 1)
                keep = log_s >= tau.view(kvh, n_rep, 1).expand(kvh, n_rep, q_len).reshape(kvh, -1, 1)
            keep &= torch.isfinite(log_sz)  # empty clusters never count
            if q_len == 1:
                self.lookups += kvh * n_rep * log_sz.shape[-1]
            return keep.view(n_heads, q_len, -1)
        cents = repeat_kv(self.index.centroids[layer][None], n_rep)[0]  # (H, C, D)
        log_sz = repeat_kv(self.index.log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C)
        live = torch.isfinite(log_sz)[:, None, :]  # (H, 1, C): empty clusters never count
        coarse, coarse_log_sizes, parents = self.index.coarse_levels()
        cc = repeat_kv(coarse[layer][None], n_rep)[0]  # (H, C1, D)
        log_csz = repeat_kv(coarse_log_sizes[layer][None, :, :, None], n_rep)[0, :, :, 0]
        parent = repeat_kv(parents[layer][None, :, :, None], n_rep)[0, :, :, 0]  # (H, C)
        log_s1, log_den = _log_scores(q, cc, log_csz, scaling)
        under = (log_s1 >= cal.log_tau_coarse).gather(-1, parent[:, None, :].expand(-1, q.shape[1], -1))  # (H, Q, C)
        log_s2, _ = _log_scores(q, cents, log_sz, scaling, log_den=log_den)
        if q.shape[1] == 1:
            self.lookups += float(cc.shape[0] * cc.shape[1] + under.sum())
        return under & (log_s2 >= cal.log_tau) & live

    def _rest_reads(self, layer: int) -> float:
        """Mean values read per query head for the estimate of the rest: one per live cluster (0 when off)."""
        if not self.config.estimate_rest:
            return 0.0
        key = ("live_clusters", layer)
        got = self.index._derived.get(key)
        if got is None:
            import torch

            got = self.index._derived[key] = float(torch.isfinite(self.index.log_sizes[layer]).sum(-1).float().mean())
        return got

    def rest_partial(self, layer: int, q: torch.Tensor, keep_c: torch.Tensor, scaling: float,
                     centroid_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The clusters not kept, estimated from their centroids: q (H, Q, D), keep_c (H, Q, C) ->
        (out (H, Q, D), lse (H, Q)), to merge with the exact parts (see `SqueezedConfig.estimate_rest`).
        `centroid_scores`: `cluster_scores` if already computed."""
        import torch

        kvh, n_clusters, d = self.index.centroids[layer].shape
        n_heads, q_len, _ = q.shape
        n_rep = n_heads // kvh
        # (KVH, n_rep * Q, C)
        s = centroid_scores if centroid_scores is not None else self.cluster_scores(layer, q, scaling)
        log_mass = (s + self.index.log_sizes[layer][:, None, :]).view(n_heads, q_len, n_clusters)
        log_mass = log_mass.masked_fill(keep_c, float("-inf"))  # kept clusters are attended exactly
        lse = torch.logsumexp(log_mass, dim=-1)  # (H, Q); -inf when every cluster is kept
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        weights = torch.exp(log_mass - safe[..., None]).view(kvh, n_rep * q_len, n_clusters)
        out = torch.matmul(weights, cluster_value_means(self.index, self.fixed, layer))  # (KVH, n_rep * Q, D)
        return out.view(n_heads, q_len, d), lse

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float,
    ) -> torch.Tensor:
        """query (1, H, Q, D); key/value (1, KVH, U, D) the user's tokens; -> (1, H, Q, D)."""
        import torch

        q = query[0]  # (H, Q, D)
        n_heads, q_len, _ = q.shape
        n_rep = n_heads // key.shape[1]
        start, nc, n = self.index.start, self.index.n_clustered, self.fixed.n_tokens
        if layer < self.config.dense_layers or (q_len > 1 and not self.config.sparse_prefill):
            self.stats.add(q_len, float(n), n)
            return dense_attend(self.fixed, layer, query, key, value, mask, scaling)
        fk, fv = self.fixed.keys[layer], self.fixed.values[layer]  # (KVH, N, D)
        centroid_scores = None if self.index.hierarchical else self.cluster_scores(layer, q, scaling)
        keep_c = self.select_clusters(layer, q, scaling, centroid_scores)  # (H, Q, C)
        if q_len == 1:
            return self._decode_step(layer, q, keep_c, key, value, mask, scaling, centroid_scores).to(query.dtype)
        kv_of_head = torch.arange(n_heads) // n_rep  # (H,)
        labels = self.index.labels[layer][kv_of_head]  # (H, Nc)
        keep = keep_c.gather(-1, labels[:, None, :].expand(-1, q_len, -1))  # (H, Q, Nc): keys of kept clusters
        counts = keep.sum(-1)  # (H, Q): keys attended per query row
        # Each head reads the union of its rows' kept keys once; each row masks to its own clusters.
        idx, valid, _ = padded_indices(keep.any(dim=1))  # (H, M)
        sel_k = fk[kv_of_head[:, None], idx + start]  # (H, M, D): only the kept keys are read
        sel_v = fv[kv_of_head[:, None], idx + start]
        allowed = keep.gather(-1, idx[:, None, :].expand(-1, q_len, -1)) & valid[:, None, :]  # (H, Q, M)
        parts = [partial_attention(q, sel_k, sel_v, scaling, allowed)]
        static = torch.cat([torch.arange(start), torch.arange(start + nc, n)])  # sinks + recent window, always
        if len(static):
            parts.append(partial_attention(q, fk[:, static], fv[:, static], scaling))  # (KVH, S, D)
        if self.config.estimate_rest:
            parts.append(self.rest_partial(layer, q, keep_c, scaling, centroid_scores))
        user = user_partial(q, key, value, mask, scaling)
        out, _ = merge_partials([*parts, user])
        self.stats.add(q_len, float(counts.float().mean()) + len(static) + self._rest_reads(layer), n)
        if self.diagnostics is not None:
            attended = torch.zeros(n_heads, q_len, n, dtype=torch.bool)
            attended[..., start:start + nc] = keep
            attended[..., static] = True
            self.diagnostics.observe(q, fk, fv, user, attended, out, scaling)
        return out[None].to(query.dtype)


    def _decode_step(
        self, layer: int, q: torch.Tensor, keep_c: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float, centroid_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoding row: q (H, 1, D), kept clusters (H, 1, C) -> (1, H, 1, D).

        The union of the kept clusters of each KV head's query heads plus the static keys is read
        with one index_select per K and V; each query head masks the clusters it did not keep.
        """
        import torch

        fk, fv = self.fixed.keys[layer], self.fixed.values[layer]  # (KVH, N, D)
        kvh, n, d = fk.shape
        n_heads, _, n_clusters = keep_c.shape
        n_rep = n_heads // kvh
        positions, cluster = self.index.decode_layout(layer, n)  # (KVH * N,) each
        keep = keep_c.view(kvh, n_rep, n_clusters)
        always = torch.ones(kvh, n_rep, 1, dtype=torch.bool)  # each head's static set
        keep_ext = torch.cat([keep, always], dim=-1)  # (KVH, n_rep, C + 1)
        # (KVH * N,): keys of a cluster some head of the group kept
        read = keep_ext.any(dim=1).view(-1).index_select(0, cluster)
        chosen = cluster[read]  # (M,): cluster id of each read key
        picked = positions[read]  # (M,) flat positions, ascending
        sel_k = fk.reshape(kvh * n, d).index_select(0, picked)  # (M, D): the only fixed keys read
        sel_v = fv.reshape(kvh * n, d).index_select(0, picked)
        # allowed[h, m]: key m belongs to query head h's KV head and to a cluster h kept.
        own = torch.eye(kvh, dtype=torch.bool)[:, None, :, None]  # (KVH, 1, KVH, 1)
        allowed = (keep_ext[:, :, None, :] & own).reshape(n_heads, -1).index_select(1, chosen)  # (H, M)
        scores = torch.matmul(q.reshape(n_heads, d).float(), sel_k.float().T) * scaling  # (H, M)
        scores.masked_fill_(~allowed, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # (H,)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        fixed_out = torch.matmul(torch.exp(scores - safe[:, None]), sel_v.float())  # (H, D)
        parts = [(fixed_out[:, None], lse[:, None])]
        if self.config.estimate_rest:
            parts.append(self.rest_partial(layer, q, keep_c, scaling, centroid_scores))
        user = user_partial(q, key, value, mask, scaling)
        out, _ = merge_partials([*parts, user])  # (H, 1, D)
        counts = allowed.sum(-1)  # (H,): fixed keys attended per query head, static included
        self.stats.add(1, float(counts.sum()) / n_heads + self._rest_reads(layer), n)
        if self.diagnostics is not None:
            hits = torch.zeros(n_heads, n, dtype=torch.int32)
            hits.scatter_add_(1, (picked % n).expand(n_heads, -1), allowed.to(torch.int32))
            self.diagnostics.observe(q, fk, fv, user, (hits > 0)[:, None, :], out, scaling)
        return out[None]


def padded_indices(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bool (..., T) -> the True positions per row, padded: idx (..., M), valid (..., M), counts (...)."""
    import torch

    rows = keep.reshape(-1, keep.shape[-1])  # (R, T)
    counts = rows.sum(-1)  # (R,)
    m = max(1, int(counts.max()))
    hit = rows.nonzero()  # (S, 2), row-major: each row's positions in order
    starts = torch.cumsum(counts, 0) - counts  # (R,)
    slot = torch.arange(hit.shape[0]) - starts[hit[:, 0]]  # (S,)
    idx = torch.zeros(rows.shape[0], m, dtype=torch.long)
    idx[hit[:, 0], slot] = hit[:, 1]
    valid = torch.arange(m)[None] < counts[:, None]  # (R, M)
    shape = keep.shape[:-1]
    return idx.view(*shape, m), valid.view(*shape, m), counts.view(shape)


class SqueezedBackend:
    """Registry entry: builds, stores and loads the squeezed index; binds it to a context."""

    name = "squeezed"
    needs_index = True
    config_class = SqueezedConfig

    def __init__(self, config: SqueezedConfig | None = None) -> None:
        self.config = config or SqueezedConfig()

    def build(self, fixed: FixedKV, queries: torch.Tensor, progress: Any = None) -> SqueezedIndex:
        return build_index(fixed, queries, self.config, progress)

    def to_tensors(self, index: SqueezedIndex) -> dict[str, Any]:
        return index.to_tensors()

    def from_tensors(self, tensors: dict[str, Any], fixed: FixedKV) -> SqueezedIndex:
        return SqueezedIndex.from_tensors(tensors, fixed.n_layers)

    def state(self, fixed: FixedKV, index: SqueezedIndex, diagnostics: Diagnostics | None = None) -> SqueezedAttention:
        return SqueezedAttention(fixed=fixed, index=index, config=self.config, diagnostics=diagnostics)


__all__ = ["FORMAT", "Calibration", "SqueezedAttention", "SqueezedBackend", "SqueezedConfig", "SqueezedIndex",
           "build_index", "calibrate"]
