"""How the attention backends plug into transformers (no Django here).

One attention function, registered once under ``ATTN_IMPLEMENTATION`` through transformers'
`AttentionInterface`, together with the eager mask function through `AttentionMaskInterface`
(without a registered mask function the function receives ``attention_mask=None`` and a prefill
silently becomes non-causal). A forward opts in per call with two keyword arguments that
transformers forwards unchanged to every attention call:

- ``parsimony_attention=<state>``: a backend state (`FullAttention`, `SqueezedAttention`,
  `RetrievalAttention`) holding the fixed context's KV *outside* the model's cache; the model's
  cache then holds only the user's tokens (positions N, N+1, ... passed as `position_ids`), and
  `state.attend(layer, query, key, value, mask, scaling)` combines both. Decoding therefore
  never copies the fixed context's KV: only the keys a backend picks are read.
- ``parsimony_capture=<QueryCapture>``: plain full attention (the reference), recording the
  post-RoPE queries at chosen positions (the fixed context's prefill: proxy queries for the
  squeezed threshold, prefill queries for the attention-aware index).

Without either keyword the function is exactly eager attention, so a model left on this
implementation by a crashed caller still answers correctly. `attention_implementation(model)`
switches a shared model to it for one block and restores the previous implementation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from workers.attention.reference import attention_reference, merge_partials, partial_attention

if TYPE_CHECKING:
    import torch

ATTN_IMPLEMENTATION = "parsimony"
STATE_KWARG = "parsimony_attention"
CAPTURE_KWARG = "parsimony_capture"

_registered = False
_register_lock = threading.Lock()


class AttentionState(Protocol):
    """A backend bound to one fixed context: attends the model's queries over fixed + user keys."""

    name: str

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        mask: torch.Tensor | None, scaling: float,
    ) -> torch.Tensor:
        """query (1, H, Q, D) post-RoPE; key/value (1, KVH, U, D) the user's tokens; -> (1, H, Q, D)."""
        ...


def parsimony_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The function transformers calls per layer. Returns (out (B, Q, H, D), no weights)."""
    assert dropout == 0.0 or not module.training, "inference only"
    scaling = float(module.scaling if scaling is None else scaling)
    state = kwargs.get(STATE_KWARG)
    if state is None:
        out = attention_reference(query, key, value, attention_mask, scaling)  # (B, H, Q, D)
        capture = kwargs.get(CAPTURE_KWARG)
        if capture is not None:
            capture.record(module.layer_idx, query, key.shape[2])
    else:
        assert query.shape[0] == 1, "the fixed-context backends decode one sequence at a time"
        out = state.attend(module.layer_idx, query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention and mask functions with transformers (idempotent). -> the name."""
    global _registered
    with _register_lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, eager_mask

            AttentionInterface.register(ATTN_IMPLEMENTATION, parsimony_attention)
            AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
            _registered = True
    return ATTN_IMPLEMENTATION


@contextlib.contextmanager
def attention_implementation(model: Any, name: str | None = None) -> Iterator[None]:
    """Run a block with `model` on our attention implementation; restore the previous one after.

    The model is shared per process: callers hold its lock (`LoadedModel.lock`) around this.
    """
    name = name or register()
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


# ---------------------------------------------------------------------------- capture (prefill)


@dataclass
class QueryCapture:
    """Records post-RoPE queries at chosen absolute positions during a (chunked) prefill.

    After the prefill, `stacked()` -> (L, H, P, D) in the order of `positions`.
    """

    positions: list[int]
    n_layers: int
    _found: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def record(self, layer: int, query: torch.Tensor, kv_len: int) -> None:
        q_len = query.shape[2]
        start = kv_len - q_len  # absolute position of this call's first query
        for pos in self.positions:
            if start <= pos < kv_len:
                self._found[(layer, pos)] = query[0, :, pos - start].detach().float().clone()  # (H, D)

    def stacked(self) -> torch.Tensor:
        import torch

        missing = [(lay, p) for lay in range(self.n_layers) for p in self.positions if (lay, p) not in self._found]
        assert not missing, f"queries not captured: {missing[:3]}..."
        return torch.stack([
            torch.stack([self._found[(lay, p)] for p in self.positions], dim=1)  # (H, P, D)
            for lay in range(self.n_layers)
        ])  # (L, H, P, D)


# ---------------------------------------------------------------------------- diagnostics (benchmarks)


@dataclass
class Diagnostics:
    """Per decoding step, layer and query head: how close a sparse backend is to full attention.

    attn_recall: share of the full attention mass on the fixed context that falls on the keys the
    backend attended; topk_mass_recall: that mass over the mass of the best set of the same size
    (full attention's own top-m keys, m = the keys the backend attended for that query head), so
    1.0 means the backend found the heaviest keys its budget could hold, whatever the model's
    attention spread leaves outside any set of that size; output_cosine: cosine between the
    backend's attention output and full attention's, given the same inputs (the layer's own
    error, not the accumulated one).
    Costs a full attention per call: benchmarks only.
    """

    recall_sum: float = 0.0
    topk_recall_sum: float = 0.0
    cosine_sum: float = 0.0
    rows: int = 0
    decode_only: bool = True
    extra: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, count]

    def add(self, name: str, total: float, count: int) -> None:
        """Accumulate another backend-specific mean (e.g. the ANN's recall of the exact top-k)."""
        acc = self.extra.setdefault(name, [0.0, 0])
        acc[0] += total
        acc[1] += count

    def observe(
        self,
        q: torch.Tensor,  # (H, Q, D)
        fixed_k: torch.Tensor,  # (KVH, N, D)
        fixed_v: torch.Tensor,
        user_part: tuple[torch.Tensor, torch.Tensor],
        attended: torch.Tensor,  # (H, Q, N) bool: fixed keys the backend attended
        sparse_out: torch.Tensor,  # (H, Q, D)
        scaling: float,
    ) -> None:
        import torch

        if self.decode_only and q.shape[1] != 1:
            return
        n_heads, q_len, d = q.shape
        grouped = q.float().reshape(fixed_k.shape[0], -1, d)  # (KVH, n_rep * Q, D): GQA without copying keys
        scores = torch.matmul(grouped, fixed_k.float().transpose(1, 2)).view(n_heads, q_len, -1) * scaling  # (H, Q, N)
        probs = torch.softmax(scores, dim=-1)
        recall = (probs * attended).sum(-1)  # (H, Q)
        # The heaviest m keys per row, m = how many this row attended: the best any selection of
        # that size could hold (sorted once, then a cumulative sum read at m).
        m = attended.sum(-1)  # (H, Q)
        best = torch.sort(probs, dim=-1, descending=True).values.cumsum(-1)  # (H, Q, N)
        best_mass = best.gather(-1, (m - 1).clamp(min=0)[..., None])[..., 0].masked_fill(m == 0, 0.0)
        topk_recall = torch.where(best_mass > 0, recall / best_mass.clamp(min=1e-12), torch.ones_like(recall))
        full_out, _ = merge_partials([partial_attention(q, fixed_k, fixed_v, scaling), user_part])
        cosine = torch.nn.functional.cosine_similarity(full_out, sparse_out.float(), dim=-1)  # (H, Q)
        self.recall_sum += float(recall.sum())
        self.topk_recall_sum += float(topk_recall.clamp(max=1.0).sum())
        self.cosine_sum += float(cosine.sum())
        self.rows += recall.numel()

    def summary(self) -> dict[str, float]:
        out = {"attn_recall": float("nan"), "topk_mass_recall": float("nan"), "output_cosine": float("nan")}
        if self.rows:
            out = {"attn_recall": self.recall_sum / self.rows, "topk_mass_recall": self.topk_recall_sum / self.rows,
                   "output_cosine": self.cosine_sum / self.rows}
        for name, (total, count) in self.extra.items():
            out[name] = total / count if count else float("nan")
        return out


__all__ = [
    "ATTN_IMPLEMENTATION",
    "CAPTURE_KWARG",
    "STATE_KWARG",
    "AttentionState",
    "Diagnostics",
    "QueryCapture",
    "attention_implementation",
    "parsimony_attention",
    "register",
]
