"""A fast forward for llama-architecture causal LMs: preallocated KV cache, weights in a chosen dtype (no Django).

transformers' generic forward spends most of a single-token step on Python (mask building, cache
bookkeeping, hooks): for SmolLM2-135M on one CPU core a decode step took ~100 ms where its weights
alone bound it near 50 ms (fp32). This module reads the same weights into a plain forward with
nothing per step but the tensor work:

- the KV cache is preallocated tensors ``(rows, KV heads, capacity, head dim)`` per layer, written in
  place at each row's position (grown by doubling when a row outgrows it);
- RoPE's cos/sin are taken once from the model's own rotary module for every position (so scaled
  RoPE, e.g. YaRN, is the model's), and looked up per step;
- the weights are ``fp32`` (the model's own tensors, shared), ``bf16`` (a copy), ``int8`` (dynamic
  quantization of every Linear, ``torch.ao.quantization.quantize_dynamic``: int8 weights, activations
  quantized per call), or weight-only ``int8-weight`` / ``int4-weight`` (``Int8WeightLinear``: int8, one
  scale per output channel; ``Int4WeightLinear``: 4-bit groups of 32 inputs with a scale and an offset each,
  which hold a GGUF Q4_1 tensor's blocks as they were): the activations stay fp32 between the products and are
  rounded to bf16 only as the kernel's input, q|k|v and gate|up are fused into one product each, and the tied
  lm_head (int4 groups for int4-weight, int8 per channel for int8-weight) only picks candidates whose best
  ``_RESCORE_TOP`` logits are recomputed from the fp32 rows. These dtypes read the prompt (prefill) on the
  model's own fp32 tensors and recompute in fp32 a decode step whose two best logits are a close call
  (``PARSIMONY_LOCAL_LM_CLOSE_CALL``); embeddings stay as loaded (a lookup reads one row).

Rows: the forward runs several sequences at once (``workers.runtime.batching``): each row has its own
length; a decode step writes each row's new key at its own position and masks the positions past it.
``FastLM.steps`` gives the single-stream ``(first_logits, step)`` pair the decode loop takes
(``workers.runtime.decode.decode``), the drop-in for ``causal_lm_steps``.

The reference is transformers' forward (``causal_lm_steps``): in fp32 the fast path gives the same
greedy tokens (tested), and ``dtype_agreement`` measures how often the other dtypes agree with it.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from workers.runtime.local_lm import LoadedModel

DTYPES = ("fp32", "bf16", "int8", "int8-weight", "int4-weight")
# Weight-only quantization (activations stay fp32 between the matrix products): CPU kernels only.
WEIGHT_ONLY = ("int8-weight", "int4-weight")
# The fp32 re-scoring of the quantized lm_head's best candidates (argmax as fp32 weights give it).
_RESCORE_TOP = 32
# A decode step whose two best logits are closer than this is recomputed in fp32 (weight-only dtypes): the
# quantized products moved SmolLM2's best logits by up to ~0.13 on the tuning prompts (questions 100-103).
# PARSIMONY_LOCAL_LM_CLOSE_CALL overrides it (0: never recompute).
DEFAULT_CLOSE_CALL = 0.25


def close_call_margin() -> float:
    """PARSIMONY_LOCAL_LM_CLOSE_CALL (logits, >= 0; default ``DEFAULT_CLOSE_CALL``)."""
    raw = os.environ.get("PARSIMONY_LOCAL_LM_CLOSE_CALL", "").strip()
    if not raw:
        return DEFAULT_CLOSE_CALL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"PARSIMONY_LOCAL_LM_CLOSE_CALL must be a number of logits >= 0, got {raw!r}")
    return value
# int4 groups: GGUF's Q4 block (and the smallest group the kernel takes).
_INT4_GROUP = 32
# The measured default per device (docs/benchmarks.md, "Local inference"): on CPUs int4-weight (SmolLM2's Q4_1
# GGUF weights held as the 4-bit groups they were; bf16 activations in the products only; close calls in fp32)
# decoded 0.94x llama.cpp's tokens/s on an Intel AMX host, 0.56x on an AMD AVX-512 one and 0.35x on an AVX2-only
# one (fp32 0.40x / 0.25x / 0.23x) and kept fp32's greedy tokens; int8-weight agreed on 0.93, bf16 on 0.83, int8
# dynamic quantization (activations quantized too) on 0.29. On CUDA bf16 is the serving norm
# (not measured here: no GPU was lent; the weight-only kernels used here are CPU ones).
DEFAULT_DTYPE = {"cpu": "int4-weight", "cuda": "bf16"}
# Rows grow their capacity in steps of this many positions (a decode of N tokens reallocates log2(N) times at most).
_MIN_CAPACITY = 256


class UnsupportedModel(ValueError):
    """The fast forward cannot run this model (not a llama-architecture causal LM)."""


def resolve_dtype(device: str, name: str | None = None) -> str:
    """The weight dtype for ``device``: ``name``, else PARSIMONY_LOCAL_LM_DTYPE, else the measured default.

    ``auto`` means the default for the device; an unknown name raises ValueError listing the valid ones.
    """
    raw = (name if name is not None else os.environ.get("PARSIMONY_LOCAL_LM_DTYPE", "auto")).strip().lower() or "auto"
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if raw == "auto":
        return DEFAULT_DTYPE[kind]
    if raw not in DTYPES:
        raise ValueError(f"PARSIMONY_LOCAL_LM_DTYPE must be one of auto, {', '.join(DTYPES)}; got {raw!r}")
    if raw in ("int8", *WEIGHT_ONLY) and kind == "cuda":
        raise ValueError(f"{raw} quantization runs on CPUs only; use bf16 or fp32 on CUDA")
    return raw


def fast_decode_enabled() -> bool:
    """PARSIMONY_FAST_DECODE (default on): whether plain local generations use this forward."""
    raw = os.environ.get("PARSIMONY_FAST_DECODE", "1").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"PARSIMONY_FAST_DECODE must be a boolean (1/0, true/false), got {raw!r}")


class Int8WeightLinear:
    """A bias-free Linear with int8 weights, one symmetric scale per output channel, fp32 in and out.

    The product runs in PyTorch's weight-only kernel (``torch._weight_int8pack_mm``: int8 weights, bf16
    activations, fp32 accumulation; its fp32-activation path is scalar and 10-50x slower); the input is
    rounded to bf16 for the product only, the output comes back as fp32. Each scale is itself a bf16 number
    (chosen before rounding the weights), so the kernel's bf16 scales are exact.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        import torch

        w = weight.detach().float()
        amax = w.abs().amax(dim=1).clamp(min=1e-12)
        scales = (amax / 127).to(torch.bfloat16)  # the scale the kernel will use, exactly
        self.q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scales.contiguous()
        self.out_features, self.in_features = w.shape

    def dequantized(self) -> torch.Tensor:
        return self.q.float() * self.scales.float()[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.q, self.scales)
        return y.view(*x.shape[:-1], self.out_features).float()


class Int4WeightLinear:
    """A bias-free Linear with 4-bit weights in groups of ``group`` inputs (a scale and an offset per group),
    fp32 in and out, through ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (bf16 activations, as above).

    A GGUF Q4_1 tensor dequantized to fp32 holds, per block of 32 inputs, 16 levels ``d * q + m``: with
    ``group=32`` the min/max grid recovers its ``q`` exactly, and only ``d`` and ``m`` are rounded (to bf16).
    """

    def __init__(self, weight: torch.Tensor, group: int = 32, *, keep_grid: bool = False) -> None:
        """``keep_grid``: keep the 4-bit values unpacked too (4 bytes a weight) for ``dequantized`` (tests)."""
        import torch

        w = weight.detach().float()
        out_f, in_f = w.shape
        if in_f % group:
            raise ValueError(f"int4 groups of {group} do not divide {in_f} inputs")
        g = w.view(out_f, in_f // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((g - lo) / scale).clamp(0, 15)
        # The kernel computes (q - 8) * scale + zero; both in bf16.
        scale_b = scale.to(torch.bfloat16)
        zero_b = (lo + 8 * scale).to(torch.bfloat16)
        q4 = q.to(torch.int32).view(out_f, in_f)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
        self.q4 = q4 if keep_grid else None
        # (in/group, out, 2): [scale, zero] per group and output channel.
        self.scales_zeros = torch.stack([scale_b.view(out_f, -1).t(), zero_b.view(out_f, -1).t()], dim=-1).contiguous()
        self.group = group
        self.out_features, self.in_features = out_f, in_f
        self._scale: torch.Tensor | None = scale_b.float() if keep_grid else None
        self._zero: torch.Tensor | None = zero_b.float() if keep_grid else None

    def dequantized(self) -> torch.Tensor:
        if self.q4 is None or self._scale is None or self._zero is None:
            raise ValueError("built without keep_grid: the 4-bit values are only held packed")
        g = self.q4.float().view(self.out_features, -1, self.group)
        return ((g - 8) * self._scale + self._zero).view(self.out_features, self.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        return y.view(*x.shape[:-1], self.out_features).float()


def _split(fn: Callable[[torch.Tensor], torch.Tensor], sizes: list[int]) -> Callable[[torch.Tensor], tuple]:
    """One fused product (weights concatenated by output) -> its parts."""
    return lambda x: fn(x).split(sizes, dim=-1)


def _each(*fns: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], tuple]:
    return lambda x: tuple(f(x) for f in fns)


@dataclass(frozen=True)
class _Layer:
    ln1: torch.Tensor  # (hidden,)
    qkv: Callable[[torch.Tensor], tuple]  # h -> (q, k, v)
    o: Callable[[torch.Tensor], torch.Tensor]
    ln2: torch.Tensor  # (hidden,)
    gate_up: Callable[[torch.Tensor], tuple]  # h -> (gate, up)
    down: Callable[[torch.Tensor], torch.Tensor]


class KVCache:
    """Per-layer keys and values ``(rows, KV heads, capacity, head dim)``; ``lengths[r]``: positions row r holds."""

    def __init__(self, lm: FastLM, rows: int, capacity: int) -> None:
        import torch

        self.lm = lm
        self.capacity = max(int(capacity), 1)
        shape = (rows, lm.kv_heads, self.capacity, lm.head_dim)
        self.k = [torch.zeros(shape, dtype=lm.act_dtype, device=lm.device) for _ in range(lm.n_layers)]
        self.v = [torch.zeros(shape, dtype=lm.act_dtype, device=lm.device) for _ in range(lm.n_layers)]
        self.lengths = [0] * rows

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def bytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.k)

    def ensure(self, positions: int) -> None:
        """Room for ``positions`` per row (doubling the capacity, copying what is held)."""
        if positions <= self.capacity:
            return
        if positions > self.lm.max_positions:
            raise ValueError(f"{positions:,} positions pass the model's {self.lm.max_positions:,}")
        import torch

        new = min(max(positions, 2 * self.capacity, _MIN_CAPACITY), self.lm.max_positions)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                grown = torch.zeros((old.shape[0], old.shape[1], new, old.shape[3]), dtype=old.dtype, device=old.device)
                grown[:, :, : self.capacity] = old
                store[i] = grown
        self.capacity = new

    def add_rows(self, n: int) -> None:
        import torch

        for store in (self.k, self.v):
            for i, old in enumerate(store):
                store[i] = torch.cat([old, old.new_zeros((n, *old.shape[1:]))], dim=0)
        self.lengths.extend([0] * n)

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` into row ``dst`` (compaction when a row leaves a batch)."""
        n = self.lengths[src]
        for store in (self.k, self.v):
            for t in store:
                t[dst, :, :n] = t[src, :, :n]
        self.lengths[dst] = n


class FastLM:
    """The fast forward over one loaded llama model's weights in ``dtype`` (see the module doc).

    Not thread-safe: callers hold the model's lock (``LoadedModel.lock``) around ``prefill``/``decode_step``.
    """

    def __init__(self, model: Any, *, dtype: str, device: str = "cpu") -> None:
        import torch
        import torch.nn.functional as F  # noqa: N812 - torch's convention

        config = model.config
        if getattr(config, "model_type", None) not in ("llama",) or not hasattr(model, "model"):
            raise UnsupportedModel(f"the fast forward runs llama-architecture models, not {config.model_type!r}")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise UnsupportedModel("the fast forward does not implement attention or MLP biases")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.device = device
        self.n_layers = int(config.num_hidden_layers)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.max_positions = int(config.max_position_embeddings)
        self.act_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        if dtype in WEIGHT_ONLY and not str(device).startswith("cpu"):
            raise ValueError(f"{dtype} runs on CPUs only")
        inner = model.model
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight  # (V, hidden), shared with the model
            # cos/sin for every position from the model's own rotary module (scaled RoPE included).
            positions = torch.arange(self.max_positions, device=device)[None]  # (1, P)
            probe = torch.zeros(1, dtype=torch.float32, device=device)
            cos, sin = inner.rotary_emb(probe, positions)  # (1, P, D) each
            self.cos, self.sin = cos[0].to(self.act_dtype), sin[0].to(self.act_dtype)  # (P, D)
            self.layers = []
            if dtype in WEIGHT_ONLY:
                # Fused products (q|k|v and gate|up concatenated by output): fewer, larger kernel calls.
                for layer in inner.layers:
                    att, mlp = layer.self_attn, layer.mlp
                    qkv_w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).float()
                    gu_w = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).float()
                    self.layers.append(_Layer(
                        ln1=layer.input_layernorm.weight.float(),
                        qkv=_split(self._weight_only(qkv_w), [att.q_proj.out_features, att.k_proj.out_features,
                                                           att.v_proj.out_features]),
                        o=self._weight_only(att.o_proj.weight),
                        ln2=layer.post_attention_layernorm.weight.float(),
                        gate_up=_split(self._weight_only(gu_w), [mlp.gate_proj.out_features, mlp.up_proj.out_features]),
                        down=self._weight_only(mlp.down_proj.weight),
                    ))
                self.lm_head = self._rescored_head(model.lm_head.weight)
                # Prefill reads the prompt in fp32 on the model's own tensors (no copy): the prompt's keys and
                # values and the first token's logits are fp32's exactly (and a many-position product is
                # compute-bound: the int4 kernel was no faster there, 292 against 327 tok/CPU-s).
                def fp32(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
                    return (lambda w: (lambda x: F.linear(x, w)))(m.weight.detach().float())

                self.prefill_layers = [
                    _Layer(ln1=layer.input_layernorm.weight.float(),
                           qkv=_each(fp32(layer.self_attn.q_proj), fp32(layer.self_attn.k_proj),
                                     fp32(layer.self_attn.v_proj)),
                           o=fp32(layer.self_attn.o_proj), ln2=layer.post_attention_layernorm.weight.float(),
                           gate_up=_each(fp32(layer.mlp.gate_proj), fp32(layer.mlp.up_proj)),
                           down=fp32(layer.mlp.down_proj))
                    for layer in inner.layers]
                self.prefill_head = fp32(model.lm_head)
            else:
                linears = [(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                            layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
                           for layer in inner.layers]
                built = self._linears([m for group in linears for m in group] + [model.lm_head])
                for i, layer in enumerate(inner.layers):
                    fns = built[7 * i : 7 * i + 7]
                    self.layers.append(_Layer(
                        ln1=layer.input_layernorm.weight.to(self.act_dtype), qkv=_each(fns[0], fns[1], fns[2]),
                        o=fns[3], ln2=layer.post_attention_layernorm.weight.to(self.act_dtype),
                        gate_up=_each(fns[4], fns[5]), down=fns[6],
                    ))
                self.lm_head = built[-1]
                self.prefill_layers, self.prefill_head = self.layers, self.lm_head
            self.norm = inner.norm.weight.to(self.act_dtype)
        self.scale = self.head_dim ** -0.5
        self.close_call = close_call_margin()
        self.steps_run = 0  # decode steps, those with a row recomputed in fp32 (close calls; weight-only dtypes),
        self.fp32_steps = 0  # and the rows recomputed
        self.fp32_rows = 0
        self.group = self.heads // self.kv_heads

    def _linears(self, modules: list[Any]) -> list[Callable[[Any], Any]]:
        """Each Linear as a callable in this dtype: fp32 the model's weight itself, bf16 a copy, int8 quantized."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - torch's convention

        if self.dtype == "fp32":  # the model's own tensors when it was loaded in fp32 (no copy)
            return [(lambda w: (lambda x: F.linear(x, w)))(m.weight.detach().float()) for m in modules]
        if self.dtype == "bf16":
            return [(lambda w: (lambda x: F.linear(x, w)))(m.weight.detach().to(torch.bfloat16)) for m in modules]
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        holder = torch.nn.ModuleList([torch.nn.Linear(m.in_features, m.out_features, bias=False) for m in modules])
        for copy, m in zip(holder, modules, strict=True):
            copy.weight = torch.nn.Parameter(m.weight.detach().float(), requires_grad=False)
        # Per output channel scales: one scale per tensor turned SmolLM2's answers to noise (agreement 0.11).
        quantized = quantize_dynamic(holder, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self._quantized = quantized  # keeps the packed weights alive
        return list(quantized)

    def _weight_only(self, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A layer's Linear in the weight-only dtype (int4 needs inputs in groups of 32, else int8 per channel)."""
        if self.dtype == "int4-weight" and weight.shape[1] % _INT4_GROUP == 0:
            return Int4WeightLinear(weight, group=_INT4_GROUP)
        return Int8WeightLinear(weight)

    def _rescored_head(self, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The lm_head quantized like the layers, with its ``_RESCORE_TOP`` best logits per position recomputed
        from the fp32 rows: the bf16 output's rounding (0.125 at a logit of 20) and the coarse grid would
        otherwise turn near-ties into different greedy picks; the other logits keep the quantized values."""

        full = weight.detach().float()  # the model's own tensor in fp32 (the embedding, tied): no copy
        head: Callable[[torch.Tensor], torch.Tensor]
        if self.dtype == "int4-weight" and full.shape[1] % _INT4_GROUP == 0:
            head = Int4WeightLinear(full, group=_INT4_GROUP)  # coarser than Q8_0: only picks the candidates
        else:
            head = Int8WeightLinear(full)

        def apply(x: torch.Tensor) -> torch.Tensor:
            logits = head(x)  # (..., V) fp32 from bf16
            top = logits.topk(_RESCORE_TOP, dim=-1).indices  # (..., k)
            exact = (full[top] * x.unsqueeze(-2)).sum(-1)  # (..., k) fp32
            return logits.scatter_(-1, top, exact)

        return apply

    # ------------------------------------------------------------------------ pieces

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        import torch

        if x.dtype == torch.float32:  # one kernel, the same numbers as below
            return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        import torch

        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F  # noqa: N812

        gate, up = layer.gate_up(self._rms(x, layer.ln2))
        return layer.down(F.silu(gate) * up)

    def new_cache(self, rows: int = 1, capacity: int = _MIN_CAPACITY) -> KVCache:
        return KVCache(self, rows, min(capacity, self.max_positions))

    # ------------------------------------------------------------------------ forward

    def prefill(self, cache: KVCache, row: int, token_ids: list[int]) -> torch.Tensor:
        """Append ``token_ids`` to row ``row`` of ``cache`` in one pass -> the last position's logits (V,) fp32."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        past, t = cache.lengths[row], len(token_ids)
        assert t >= 1, "nothing to prefill"
        cache.ensure(past + t)
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)  # (1, T)
        x = self.embed[ids].to(self.act_dtype)  # (1, T, hidden)
        cos = self.cos[past : past + t][None, None]  # (1, 1, T, D)
        sin = self.sin[past : past + t][None, None]
        # Query i (position past+i) sees keys 0..past+i.
        mask = None
        if past:
            keys = torch.arange(past + t, device=self.device)
            mask = keys[None, :] <= (past + torch.arange(t, device=self.device))[:, None]  # (T, past+T)
        for i, layer in enumerate(self.prefill_layers):
            h = self._rms(x, layer.ln1)
            q, k, v = layer.qkv(h)
            q = q.reshape(1, t, self.heads, self.head_dim).transpose(1, 2)  # (1, H, T, D)
            k = k.reshape(1, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (1, KVH, T, D)
            v = v.reshape(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            cache.k[i][row, :, past : past + t] = k[0]
            cache.v[i][row, :, past : past + t] = v[0]
            keys_i = cache.k[i][row : row + 1, :, : past + t]  # (1, KVH, past+T, D)
            vals_i = cache.v[i][row : row + 1, :, : past + t]
            att = F.scaled_dot_product_attention(q, keys_i, vals_i, attn_mask=mask, is_causal=mask is None,
                                                 scale=self.scale, enable_gqa=True)  # (1, H, T, D)
            x = x + layer.o(att.transpose(1, 2).reshape(1, t, self.heads * self.head_dim))
            x = x + self._mlp(layer, x)
        cache.lengths[row] = past + t
        last = self._rms(x[:, -1:], self.norm)  # (1, 1, hidden)
        return self.prefill_head(last)[0, 0].float()  # (V,)

    def decode_step(self, cache: KVCache, tokens: list[int]) -> torch.Tensor:
        """One token for each of rows ``0..len(tokens)-1`` at its own next position -> logits (B, V) fp32.

        Weight-only dtypes: a row whose two best logits are closer than ``close_call`` (a near-tie the
        quantized products could order differently from fp32) is computed again in fp32, that row alone (its
        position rewritten; the other rows keep the quantized step): ``steps_run`` counts steps,
        ``fp32_steps`` those with a recomputed row, ``fp32_rows`` the rows recomputed."""
        logits = self._step(cache, tokens, self.layers, self.lm_head)
        self.steps_run += 1
        if self.layers is not self.prefill_layers:
            best = logits.topk(2, dim=-1).values  # (B, 2)
            close = ((best[:, 0] - best[:, 1]) < self.close_call).nonzero().flatten().tolist()
            if close:
                # Only the close rows: a batch step recomputed whole cost every row an fp32 step whenever any
                # one row was close (58 of 125 steps at 16 rows).
                subset = None if len(close) == len(tokens) else close
                exact = self._step(cache, tokens, self.prefill_layers, self.prefill_head, subset=subset)
                if subset is None:
                    logits = exact
                else:
                    logits[close] = exact
                self.fp32_steps += 1
                self.fp32_rows += len(close)
        for r in range(len(tokens)):
            cache.lengths[r] += 1
        return logits

    def _step(self, cache: KVCache, tokens: list[int], layers: list[_Layer],
              head: Callable[[torch.Tensor], torch.Tensor], subset: list[int] | None = None) -> torch.Tensor:
        """The forward of one decode step over ``layers`` (KV written at each row's position; lengths unchanged)
        for rows ``0..len(tokens)-1``, or only the rows in ``subset`` (-> their logits, in that order)."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        which = list(range(len(tokens))) if subset is None else subset
        b = len(which)
        lengths = [cache.lengths[r] for r in which]
        longest = max(lengths) + 1
        cache.ensure(longest)
        ids = torch.tensor([tokens[r] for r in which], dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        pos = torch.tensor(lengths, dtype=torch.long, device=self.device)  # (B,)
        rows = torch.tensor(which, dtype=torch.long, device=self.device)
        x = self.embed[ids].to(self.act_dtype)  # (B, 1, hidden)
        cos = self.cos[pos][:, None, None]  # (B, 1, 1, D)
        sin = self.sin[pos][:, None, None]
        mask = None
        if b > 1 and min(lengths) + 1 != longest:
            # Row r sees its own positions 0..lengths[r] only (shorter rows: padding past them).
            mask = (torch.arange(longest, device=self.device)[None, :] <= pos[:, None])[:, None, None]  # (B,1,1,T)
        for i, layer in enumerate(layers):
            h = self._rms(x, layer.ln1)
            q, k, v = layer.qkv(h)
            q = q.reshape(b, 1, self.heads, self.head_dim).transpose(1, 2)  # (B, H, 1, D)
            k = k.reshape(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KVH, 1, D)
            v = v.reshape(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            ck, cv = cache.k[i], cache.v[i]
            ck[rows, :, pos] = k[:, :, 0]  # each row at its own position
            cv[rows, :, pos] = v[:, :, 0]
            if subset is None:
                keys, vals = ck[:b, :, :longest], cv[:b, :, :longest]
            else:  # a copy of the chosen rows (a few rows: small next to the step)
                keys, vals = ck[rows, :, :longest], cv[rows, :, :longest]
            att = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=True)  # (B, H, 1, D)
            x = x + layer.o(att.transpose(1, 2).reshape(b, 1, self.heads * self.head_dim))
            x = x + self._mlp(layer, x)
        return head(self._rms(x, self.norm))[:, 0].float()  # (B, V)

    # ------------------------------------------------------------------------ single stream

    def steps(
        self, prompt_ids: list[int], *, deadline: float | None = None, chunk_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """``causal_lm_steps`` on the fast forward: prefill ``prompt_ids`` in chunks (``PrefillStopped`` past
        ``deadline`` between chunks) -> (the last position's logits (V,), a step function)."""
        from workers.runtime.decode import PrefillStopped, prefill_chunk_tokens

        total = len(prompt_ids)
        assert total >= 1, "an empty prompt has nothing to prefill"
        expected = total + (max_new_tokens or _MIN_CAPACITY)
        cache = self.new_cache(1, max(expected, _MIN_CAPACITY))
        chunk = chunk_tokens or prefill_chunk_tokens()
        logits = None
        for start in range(0, total, chunk):
            if deadline is not None and start > 0 and time.perf_counter() > deadline:
                raise PrefillStopped(prefilled=start, total=total)
            logits = self.prefill(cache, 0, prompt_ids[start : start + chunk])
        assert logits is not None

        def step(token: int) -> torch.Tensor:
            return self.decode_step(cache, [token])[0]

        return logits, step


# ---------------------------------------------------------------------------- one per model and dtype

_fast: weakref.WeakKeyDictionary[Any, dict[str, FastLM]] = weakref.WeakKeyDictionary()
_fast_lock = threading.Lock()


def fast_lm(lm: LoadedModel, dtype: str | None = None) -> FastLM:
    """The fast forward of ``lm`` in ``dtype`` (None: ``resolve_dtype``), built once per model and dtype.

    Raises ``UnsupportedModel`` for a model it cannot run (callers fall back to ``causal_lm_steps``).
    """
    name = resolve_dtype(lm.device, dtype)
    with _fast_lock:
        per_model = _fast.setdefault(lm, {})
        hit = per_model.get(name)
        if hit is None:
            import torch

            with torch.inference_mode():
                hit = FastLM(lm.model, dtype=name, device=lm.device)
            per_model[name] = hit
        return hit


def local_steps(
    lm: LoadedModel, prompt_ids: list[int], *, deadline: float | None = None, max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
    """The (first logits, step) pair a plain local generation decodes from: the fast forward when
    PARSIMONY_FAST_DECODE is on and the model is one it runs, else the reference ``causal_lm_steps``.
    Caller holds the model lock and inference mode (as for ``causal_lm_steps``)."""
    from workers.runtime.decode import causal_lm_steps

    if fast_decode_enabled():
        try:
            fast = fast_lm(lm)
        except UnsupportedModel:
            fast = None
        if fast is not None:
            return fast.steps(prompt_ids, deadline=deadline, max_new_tokens=max_new_tokens)
    return causal_lm_steps(lm, prompt_ids, deadline=deadline)


def greedy_tokens(first_logits: torch.Tensor, step: Callable[[int], torch.Tensor], n: int,
                  eos: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """``n`` greedy tokens from a (first logits, step) pair, stopping after an EOS id (plain argmax, no guard)."""
    import torch

    out: list[int] = []
    logits = first_logits
    while True:
        token = int(torch.argmax(logits))
        out.append(token)
        if len(out) >= n or token in eos:
            return out
        logits = step(token)


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """The share of reference tokens the other run reproduced: per sequence, the tokens before the first
    difference (greedy decoding diverges for good after one), summed over sequences, over all reference tokens."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference sequences but {len(other)} to compare")
    total = sum(len(r) for r in reference)
    if total == 0:
        raise ValueError("no reference tokens to compare")
    same = 0
    for ref, oth in zip(reference, other, strict=True):
        for a, b in zip(ref, oth, strict=False):
            if a != b:
                break
            same += 1
    return same / total


__all__ = [
    "DEFAULT_DTYPE",
    "DTYPES",
    "WEIGHT_ONLY",
    "FastLM",
    "Int4WeightLinear",
    "Int8WeightLinear",
    "KVCache",
    "UnsupportedModel",
    "close_call_margin",
    "fast_decode_enabled",
    "fast_lm",
    "greedy_tokens",
    "local_steps",
    "resolve_dtype",
    "token_agreement",
]
