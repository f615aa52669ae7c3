"""Measure how fast this process runs a model: the numbers behind device-time reservations (no Django).

A worker calibrates each local model it serves when it starts (a few seconds): a causal LM's
prefill throughput (prompt tokens per second, from a long and a short prompt), decode
throughput (greedy steps after the long prompt, through EOS) and the fixed per-call overhead;
an embedder's tokens per second at its longest inputs and the overhead of a one-query call.
Everything runs the real paths (`workers.runtime.decode`, `Embedder.encode`) on the clock calls are
billed by (`workers.runtime.device_clock`), so what is measured is what a call costs. `apps.costs` stores the result
as the worker's profile and prices reservations from it (docs/costs.md, "The cost model").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.runtime.decode import decode, eos_ids, greedy
from workers.runtime.device_clock import device_clock
from workers.runtime.fast_lm import local_steps

if TYPE_CHECKING:
    from workers.runtime.embedders import Embedder
    from workers.runtime.local_lm import LoadedModel

# Plain prose, repeated to the length wanted: representative of RAG prompts.
_FILLER = (
    "The committee reviewed the quarterly report on water usage in the northern district and "
    "asked the engineers to explain why consumption rose while the population stayed the same. "
)


@dataclass(frozen=True)
class Calibration:
    """One model's measured speed on one device. Embedders: decode_tps is 0 (they only read)."""

    device: str
    prefill_tps: float  # tokens read per second
    decode_tps: float  # tokens generated per second
    overhead_s: float  # per call, beyond the per-token time
    took_s: float  # how long measuring took


def detect_device(explicit: str | None = None) -> str:
    """``explicit`` when set ("cpu" / "cuda"), else "cuda" when torch sees a GPU, else "cpu"."""
    if explicit:
        return explicit
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _filler_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(_FILLER, add_special_tokens=False)
    return ids[:n]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _timed_call(lm: LoadedModel, prompt_ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    """One call as the meter runs and bills it -> (prefill seconds, decode seconds, decode steps),
    on the billing clock (``workers.runtime.device_clock``)."""
    import torch

    clock = device_clock(lm.device)
    with lm.lock, torch.inference_mode():
        _sync(lm.device)
        t0 = clock()
        # The path the meter bills (the fast forward where it runs the model), so predictions match bills.
        first_logits, step = local_steps(lm, prompt_ids, max_new_tokens=new_tokens)
        _sync(lm.device)
        t1 = clock()
        result = decode(
            first_logits=first_logits,
            step=step,
            tokenizer=lm.tokenizer,
            eos=eos_ids(lm),
            max_new_tokens=new_tokens,
            deadline=float("inf"),
            pick=greedy,
            ignore_eos=True,
        )
        _sync(lm.device)
        t2 = clock()
    return t1 - t0, t2 - t1, len(result.step_s)


def calibrate_causal_lm(lm: LoadedModel, *, prompt_tokens: int = 384, decode_tokens: int = 32) -> Calibration:
    """Prefill and decode throughput and per-call overhead of ``lm`` on its device (a few seconds on CPU).

    Prefill: the slope between a ``prompt_tokens`` prompt and a 16-token one (so fixed costs
    are not counted per token); overhead: the short prompt's time beyond that slope. Decode:
    ``decode_tokens`` greedy steps after the long prompt (a realistic cache), EOS ignored.
    """
    started = time.perf_counter()
    short_n = 16
    long_ids = _filler_ids(lm.tokenizer, prompt_tokens)
    short_ids = long_ids[:short_n]
    _timed_call(lm, short_ids, 2)  # warm-up: first-call allocations are not a per-call cost
    short_prefill, _, _ = _timed_call(lm, short_ids, 1)
    long_prefill, decode_s, steps = _timed_call(lm, long_ids, decode_tokens)
    per_token = max((long_prefill - short_prefill) / (prompt_tokens - short_n), 1e-6)
    prefill_tps = 1.0 / per_token
    overhead_s = max(short_prefill - short_n * per_token, 0.0)
    decode_tps = steps / decode_s if decode_s > 0 and steps else prefill_tps
    return Calibration(
        device=lm.device,
        prefill_tps=prefill_tps,
        decode_tps=decode_tps,
        overhead_s=overhead_s,
        took_s=time.perf_counter() - started,
    )


def _query_after_a_pause(embedder: Embedder, query: str, pause_s: float = 0.05) -> float:
    """One query's device-seconds, timed as a request meets the model: after other work ran (a
    query right after another finds caches warm and costs less than one arriving on its own)."""
    time.sleep(pause_s)
    return embedder.encode_timed([query], batch_size=1)[1]


def calibrate_embedder(embedder: Embedder, *, texts: int = 16, rounds: int = 2, queries: int = 5) -> Calibration:
    """The per-token rate and per-call overhead of ``embedder.encode``, on the two shapes that bound its work.

    - Rate: a batch of ``texts`` passages at the model's maximum length (the slower of ``rounds``),
      the costliest shape per token (attention grows with the length), so a call's padded tokens ÷
      this rate bound its token part (a batch of shorter texts goes faster per token).
    - Overhead: a one-query call (what a search pays), ``queries`` of them each after a short pause
      (as requests arrive), their 75th percentile less its tokens at that rate.

    Both from the slow side of what was measured: this is one sample of a noisy machine, taken
    before any real call (which also runs slower among a request's other work than in a loop);
    the ledger refit then brings the profile to the median of the real calls (docs/costs.md).
    Timed as calls are billed: the device-seconds the call used holding the model
    (``Embedder.encode_timed``).
    """
    started = time.perf_counter()
    limit = embedder.max_seq_length
    words = (_FILLER * (2 + limit // 8)).split()
    # Each passage has more words than the model reads tokens: all are truncated to the same width.
    batch = [" ".join(words[i : i + limit]) for i in range(texts)]
    query = "Why did water consumption rise in the northern district?"
    tokens = sum(len(ids) for ids in embedder.tokenizer(batch, truncation=True)["input_ids"])
    query_tokens = len(embedder.tokenizer([query], truncation=True)["input_ids"][0])
    embedder.encode(batch[:2], batch_size=2)  # warm-up: first-call allocations are not a per-call cost
    embedder.encode([query])
    many = max(embedder.encode_timed(batch, batch_size=texts)[1] for _ in range(max(rounds, 1)))
    per_token = max(many / tokens, 1e-7)
    ones = sorted(_query_after_a_pause(embedder, query) for _ in range(max(queries, 1)))
    one = ones[math.ceil(0.75 * (len(ones) - 1))]
    return Calibration(
        device=str(embedder.device),
        prefill_tps=1.0 / per_token,
        decode_tps=0.0,
        overhead_s=max(one - query_tokens * per_token, 0.0),
        took_s=time.perf_counter() - started,
    )


__all__ = ["Calibration", "calibrate_causal_lm", "calibrate_embedder", "detect_device"]
