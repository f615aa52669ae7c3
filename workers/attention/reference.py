"""Full attention, computed plainly: the reference every sparse backend is tested against.

`attention_reference` is transformers' eager attention (scores, additive mask, softmax in fp32,
weighted sum; GQA by repeating KV heads). `partial_attention` + `merge_partials` compute the same
thing in parts: attention over disjoint key sets, each returned with the log-sum-exp of its
scores, merges exactly into attention over their union — which is how the sparse backends combine
a dense part (recent window, the user's tokens) with selected or retrieved keys. `FullAttention`
is the "full" backend over a fixed context whose KV sits outside the model's cache. No Django here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, KVH, T, D) -> (B, KVH * n_rep, T, D): each KV head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    b, kvh, t, d = x.shape
    return x[:, :, None].expand(b, kvh, n_rep, t, d).reshape(b, kvh * n_rep, t, d)


def attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Eager attention. query (B, H, Q, D), key/value (B, KVH, T, D), mask additive (B, 1, Q, T) or None.

    Returns (B, H, Q, D). Identical to transformers' `eager_attention_forward` (before its transpose).
    """
    import torch

    n_rep = query.shape[1] // key.shape[1]
    assert query.shape[1] == key.shape[1] * n_rep, "query heads must be a multiple of KV heads"
    k = repeat_kv(key, n_rep)
    v = repeat_kv(value, n_rep)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling  # (B, H, Q, T)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, v)  # (B, H, Q, D)


def partial_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its own key set, with the log-sum-exp of its scores.

    query (H, Q, D); key/value either per KV head (KVH, T, D) with H a multiple of KVH (GQA: query
    head h reads KV head h // (H / KVH); the queries are grouped, the keys are never copied) or
    per query (H, Q, T, D); allowed: bool, broadcastable to (H, Q, T) (None: all). Returns
    out (H, Q, D) and lse (H, Q) (fp32). A query with no allowed key gets out = 0 and
    lse = -inf, which merges as "no mass".
    """
    import torch

    n_heads, q_len, d = query.shape
    q = query.float()
    if key.dim() == 3:
        groups = key.shape[0]
        n_rep = n_heads // groups
        assert groups * n_rep == n_heads, "query heads must be a multiple of KV heads"
        grouped = q.reshape(groups, n_rep * q_len, d)  # (KVH, n_rep * Q, D)
        scores = torch.matmul(grouped, key.float().transpose(1, 2)).view(n_heads, q_len, -1) * scaling  # (H, Q, T)
    else:
        scores = torch.einsum("hqd,hqtd->hqt", q, key.float()) * scaling  # (H, Q, T)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (H, Q)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    probs = torch.exp(scores - safe[..., None])  # (H, Q, T); exp(-inf) = 0 for masked keys
    if value.dim() == 3:
        groups = value.shape[0]
        out = torch.matmul(probs.view(groups, -1, probs.shape[-1]), value.float()).view(n_heads, q_len, -1)
    else:
        out = torch.einsum("hqt,hqtd->hqd", probs, value.float())
    return out, lse


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax over the union of disjoint key sets from per-part (out (H, Q, D), lse (H, Q)).

    For two parts A and B:

        lse = logaddexp(lse_a, lse_b)
        out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

    (softmax over A ∪ B = each part's softmax re-weighted by its share of the total mass).
    """
    import torch

    assert parts, "nothing to merge"
    lses = torch.stack([lse for _, lse in parts])  # (P, H, Q)
    total = torch.logsumexp(lses, dim=0)  # (H, Q)
    safe = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    out = torch.zeros_like(parts[0][0])
    for part_out, part_lse in parts:
        out = out + torch.exp(part_lse - safe)[..., None] * part_out
    return out, total


def bool_mask(mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor | None:
    """An additive (B=1, 1, Q, T) mask -> bool (1, Q, T) "may attend" (None stays None)."""
    import torch

    if mask is None:
        return None
    assert mask.shape[0] == 1 and mask.shape[-2:] == (q_len, kv_len), f"unexpected mask shape {tuple(mask.shape)}"
    if mask.dtype == torch.bool:
        return mask[0, :1].reshape(1, q_len, kv_len)
    # Additive masks hold 0 (attend) or finfo(dtype).min (do not): anything far below zero is "no".
    return (mask[0, :1] > torch.finfo(mask.dtype).min / 2).reshape(1, q_len, kv_len)


@dataclass
class FixedKV:
    """The fixed context's KV for one model: per layer keys/values (KVH, N, D), post-RoPE, positions [0, N)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def n_tokens(self) -> int:
        return int(self.keys[0].shape[1])

    @property
    def n_layers(self) -> int:
        return len(self.keys)


class FullAttention:
    """The "full" backend: exact attention over every fixed-context key plus the user's tokens."""

    name = "full"

    def __init__(self, fixed: FixedKV) -> None:
        self.fixed = fixed
        self.stats = AttendStats()

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float,
    ) -> torch.Tensor:
        """query (1, H, Q, D); key/value (1, KVH, U, D): the user's tokens only (the model's cache)."""
        out = dense_attend(self.fixed, layer, query, key, value, mask, scaling)
        self.stats.add(query.shape[2], float(self.fixed.n_tokens), self.fixed.n_tokens)
        return out


def dense_attend(
    fixed: FixedKV, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    mask: torch.Tensor | None, scaling: float,
) -> torch.Tensor:
    """Exact attention of query (1, H, Q, D) over every fixed key plus the user's key/value (1, KVH, U, D)."""
    q = query[0]  # (H, Q, D)
    fixed_part = partial_attention(q, fixed.keys[layer], fixed.values[layer], scaling)  # keys (KVH, N, D), not copied
    out, _ = merge_partials([fixed_part, user_partial(q, key, value, mask, scaling)])
    return out[None].to(query.dtype)  # (1, H, Q, D)


KV_PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class FullConfig:
    # Round the fixed context's keys and values to this precision before attending: what storing
    # the KV cache in half precision would change. A measuring aid (the sensitivity of a model's
    # answers to a perturbation every deployment accepts); the store keeps float32 either way.
    kv_precision: str = "float32"

    def __post_init__(self) -> None:
        if self.kv_precision not in KV_PRECISIONS:
            raise ValueError(f"kv_precision must be one of {', '.join(KV_PRECISIONS)}, got {self.kv_precision!r}")


class FullBackend:
    """Registry entry for full attention: no index, every fixed-context key attended."""

    name = "full"
    needs_index = False
    config_class = FullConfig

    def __init__(self, config: FullConfig | None = None) -> None:
        self.config = config or FullConfig()

    def state(self, fixed: FixedKV, index: None = None, diagnostics: object = None) -> FullAttention:
        if self.config.kv_precision != "float32":
            import torch

            dtype = getattr(torch, self.config.kv_precision)
            fixed = FixedKV(
                [k.to(dtype).to(k.dtype) for k in fixed.keys], [v.to(dtype).to(v.dtype) for v in fixed.values]
            )
        return FullAttention(fixed)


def user_partial(
    q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention of q (H, Q, D) over the user's tokens key/value (1, KVH, U, D)."""
    return partial_attention(q, key[0], value[0], scaling, bool_mask(mask, q.shape[1], key.shape[2]))


@dataclass
class AttendStats:
    """Fixed-context keys attended, summed over (layer, query head, query row); split prefill/decode."""

    decode_keys: float = 0.0
    decode_rows: int = 0
    prefill_keys: float = 0.0
    prefill_rows: int = 0
    n_fixed: int = 0

    def add(self, q_len: int, mean_keys: float, n_fixed: int) -> None:
        """One attention call: `mean_keys` fixed keys attended per (query head, query row) on average."""
        self.n_fixed = n_fixed
        if q_len == 1:
            self.decode_keys += mean_keys
            self.decode_rows += 1
        else:
            self.prefill_keys += mean_keys
            self.prefill_rows += 1

    def fraction(self, phase: str = "decode") -> float:
        if phase == "decode":
            keys, rows = self.decode_keys, self.decode_rows
        else:
            keys, rows = self.prefill_keys, self.prefill_rows
        if not rows or not self.n_fixed:
            return float("nan")
        return keys / rows / self.n_fixed


__all__ = [
    "AttendStats",
    "FixedKV",
    "FullAttention",
    "FullBackend",
    "attention_reference",
    "bool_mask",
    "dense_attend",
    "merge_partials",
    "partial_attention",
    "repeat_kv",
    "user_partial",
]
