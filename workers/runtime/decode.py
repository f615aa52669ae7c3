"""The one token-by-token decode loop behind every local generation (no Django, torch lazily).

The meter (`workers.runtime.meter`), fixed-context attention (`workers.attention.fixed_context`)
and superposition prompting (`workers.prompting.superposition`) each prepare their own prompt
state (a plain cache, a fixed context outside the cache, a fork-join cache) and hand `decode` the
first logits and a step function; the loop owns what they must agree on, so the bill and the
stream mean the same thing everywhere: EOS ids, the stop conditions (max tokens, EOS, stop
strings, the wall-time deadline, the hold's device-second budget, a failing `on_token`, a
repetition loop), streaming text pieces, and the finish reason. Prompts are prefilled in chunks
(`chunked_prefill`) with the same deadline checked between chunks, so the wall-time limit bounds a
long prompt's prefill too.

The degeneration guard (`workers.runtime.decoding`) stops a generation that has fallen into a
loop (the same n-gram, line or sentence again and again) with "repetition", and records the tokens of the
cap it did not spend (`DecodeResult.repetition_tokens_saved`): the service shows them as a saving.

The budget (`budget_s`, the device-seconds the caller's hold can still pay for) is enforced
before each step: the loop stops ("budget") when the compute already spent plus the expected
next step (the slowest of the recent steps) would pass it, so the seconds billed stay within
the hold (the meter also clamps them; see docs/costs.md, "The hold is enforced").
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from workers.runtime.decoding import (
    SEGMENT_END_CHARS,
    DecodingSettings,
    logits_processors,
    loop_at_tail,
    segment_loop,
)

if TYPE_CHECKING:
    import torch

    from workers.runtime.grammar import TokenConstraint
    from workers.runtime.local_lm import LoadedModel

FinishReason = Literal["stop", "length", "time_limit", "budget", "repetition", "error", "cancelled"]
# Feeds one token id to the model at the next position -> the next token's logits (V,).
Step = Callable[[int], "torch.Tensor"]
# Picks the next token id from logits (V,): `greedy` or a `sampler(...)`.
PickToken = Callable[["torch.Tensor"], int]


# ---------------------------------------------------------------------------- stop conditions


class GenerationCancelled(Exception):
    """Raised by an ``on_token`` callback when the run was cancelled (a Stop button, a closed stream): the
    loop stops before the next token with finish_reason "cancelled" and reports what it used, so the
    caller bills exactly the tokens generated."""


def eos_ids(lm: LoadedModel) -> frozenset[int]:
    """End-of-sequence ids: the generation config's (one or several) and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(lm.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if lm.tokenizer.eos_token_id is not None:
        ids.add(int(lm.tokenizer.eos_token_id))
    return frozenset(ids)


def truncate_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """`text` cut before the first stop string it contains -> (text, whether one was found)."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish_reason(
    *, callback_failed: bool, stop_hit: bool, ended_with_eos: bool, n_generated: int, max_new_tokens: int,
    timed_out: bool, out_of_budget: bool = False, looped: bool = False,
) -> FinishReason:
    """Why generation ended. A failing callback wins (the caller must know the stream broke),
    then the model's own end (EOS or a stop string), then the degeneration guard (a loop), then
    the caps (tokens, time, the hold)."""
    if callback_failed:
        return "error"
    if stop_hit or ended_with_eos:
        return "stop"
    if looped:
        return "repetition"
    if n_generated >= max_new_tokens:
        return "length"
    if timed_out:
        return "time_limit"
    if out_of_budget:
        return "budget"
    return "stop"


class Allowance:
    """The device-seconds a caller's hold pays for, which may grow while the work goes on.

    `seconds`: what the hold covers now, counted from when the call's compute began. `grow(needed_s,
    step_s)`: asked when the next step would pass `seconds` (needed_s: the compute so far plus that
    step; step_s: one step's expected seconds); the caller's service tries to extend its hold and
    returns what it covers afterwards (unchanged when a budget refuses). Without `grow` it is a
    plain limit. A plain float wherever a budget is taken means `Allowance(float)`.
    """

    def __init__(self, seconds: float, grow: Callable[[float, float], float] | None = None) -> None:
        if not seconds >= 0:
            raise ValueError(f"budget_s must be >= 0, got {seconds}")
        self.seconds = float(seconds)
        self.grow = grow
        self.grown = 0  # how many times the hold grew (diagnostics)

    def covers(self, needed_s: float, step_s: float = 0.0) -> bool:
        """Whether the hold pays for `needed_s` seconds, growing it first when it does not."""
        if needed_s <= self.seconds:
            return True
        if self.grow is not None:
            granted = float(self.grow(needed_s, step_s))
            if granted > self.seconds:
                self.seconds = granted
                self.grown += 1
        return needed_s <= self.seconds


def as_allowance(budget_s: float | Allowance | None) -> Allowance | None:
    """`budget_s` as an Allowance (None: unbounded); raises ValueError for a negative limit."""
    if budget_s is None or isinstance(budget_s, Allowance):
        return budget_s
    return Allowance(budget_s)


# How many recent steps predict the next one (their maximum: a step rarely gets faster suddenly).
_RECENT_STEPS = 4


def next_step_s(step_s: list[float], first_step_s: float) -> float:
    """The expected cost of the next decode step: the slowest of the last few, or a first guess."""
    recent = step_s[-_RECENT_STEPS:]
    return max(recent) if recent else first_step_s


# ---------------------------------------------------------------------------- streaming


class TextStream:
    """Calls `on_token` with new text as token ids arrive.

    Decodes the whole generated sequence each step (cheap next to a decode step) and emits the
    new suffix, holding back a trailing partial UTF-8 character and anything that could still
    become a stop string, so the pieces always concatenate to the final text. A callback that
    raises (client went away) is recorded in `error` instead of losing the usage numbers; the
    loop then stops.
    """

    def __init__(self, tokenizer: Any, on_token: Callable[[str], None], stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.emitted = ""
        self.error: BaseException | None = None

    def add(self, token_id: int) -> None:
        self.ids.append(int(token_id))
        if self.error is not None:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        text, hit = truncate_at_stop(text, self.stop)
        safe = len(text) if hit else len(text) - self._held_back(text)
        self._emit_upto(text[:safe])

    def finish(self, final_text: str) -> None:
        """Emit whatever of the final text (after stop-string truncation) is still held back."""
        self._emit_upto(final_text)

    def _held_back(self, text: str) -> int:
        # Longest suffix of text that is a proper prefix of some stop string.
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _emit_upto(self, text: str) -> None:
        if self.error is not None or len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return
        piece = text[len(self.emitted) :]
        self.emitted = text
        try:
            self.on_token(piece)
        except Exception as exc:  # noqa: BLE001 - any callback failure must stop generation
            self.error = exc


# ---------------------------------------------------------------------------- token choice


def token_logprob(logits: torch.Tensor, token: int) -> float:
    """log softmax(``logits``)[``token``] in float32 (one pass over the vocabulary: a small fraction of a
    step's lm_head); ``-inf`` for a masked-out token."""
    import torch

    row = logits.reshape(-1).float()
    return float(row[token] - torch.logsumexp(row, dim=0))


def greedy(logits: torch.Tensor) -> int:
    """The most likely token (the first one on ties, as transformers' greedy search)."""
    import torch

    return int(torch.argmax(logits))


def decoding_pick(lm: Any, decoding: DecodingSettings | None, temperature: float = 0.0) -> PickToken:
    """How a local generation picks its tokens: greedy, or sampling at ``temperature`` (a request's own) or
    else at the decoding settings' (a pipeline's), with the settings' top_p or the model's, and the model's
    top_k (transformers' generation config)."""
    if decoding is not None and decoding.temperature > 0 and not temperature > 0:
        temperature = decoding.temperature
    if not temperature > 0:
        return greedy
    config = lm.model.generation_config
    top_p = decoding.top_p if decoding is not None and decoding.top_p is not None else config.top_p
    return sampler(temperature, top_k=config.top_k or 50, top_p=top_p or 1.0)


def sampler(temperature: float, *, top_k: int | None = 50, top_p: float | None = 1.0) -> PickToken:
    """Sampling as transformers' `generate(do_sample=True)` does it: temperature, top-k, top-p."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def pick(logits: torch.Tensor) -> int:
        import torch

        scores = logits.float()[None]  # (1, V)
        for warp in warpers:
            scores = warp(None, scores)
        return int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[0, 0])

    return pick


# ---------------------------------------------------------------------------- the loop


@dataclass
class DecodeResult:
    """What one decode produced. `text` is cut before the first stop string; `token_ids` are every
    id generated (the final EOS included: it cost a step), the ones that produced a stop string too."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    error: str | None = None
    step_s: list[float] = field(default_factory=list)  # wall seconds per step (forward) after the first token
    step_cpu_s: list[float] = field(default_factory=list)  # this process's CPU seconds per step
    step_device_s: list[float] = field(default_factory=list)  # per step on the billing clock (`clock`)
    first_token_at: float = math.nan  # time.perf_counter() when the first token was picked
    budget_s: float | None = None  # the device-seconds the hold covered at the end (None: unbounded)
    # Stopped as a loop ("repetition"): the tokens of the cap not spent (max_new_tokens - generated).
    repetition_tokens_saved: int = 0
    # The natural log-probability of each generated token under the distribution it was picked from (after
    # penalties and a grammar's mask): the model's own confidence, read by `workers.rag.quality`.
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def decode_s(self) -> float:
        return float(sum(self.step_s))


def decode(
    *,
    first_logits: torch.Tensor,
    step: Step,
    tokenizer: Any,
    eos: frozenset[int] | set[int],
    max_new_tokens: int,
    deadline: float,
    on_token: Callable[[str], None] | None = None,
    stop: list[str] | None = None,
    prompt_ids: list[int] | None = None,
    pick: PickToken = greedy,
    budget_s: float | Allowance | None = None,
    compute_started: float | None = None,
    first_step_s: float = 0.0,
    ignore_eos: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    decoding: DecodingSettings | None = None,
    constraint: TokenConstraint | None = None,
) -> DecodeResult:
    """Decode from `first_logits` (the last prompt position's logits, (V,)) until a stop condition.

    After each token: stream it, then stop on EOS, `max_new_tokens`, a failing `on_token`, a stop
    string at the end of the sequence (transformers' StopStringCriteria, which may match across
    the end of `prompt_ids`), or `deadline` (a `time.perf_counter()` value) passed. The deadline
    is checked only after a token, so at least one token is always produced.

    `budget_s`: the device-seconds the hold can pay for, counted from `compute_started` (a `clock()`
    value: when the call's compute began, so the prefill counts; default: now). `clock` is the
    billing clock (`workers.runtime.device_clock`: the calling thread's CPU time on a one-thread
    CPU); the wall-time `deadline` stays on `time.perf_counter`. Before each step the loop stops
    with "budget" when the seconds since then plus the expected next step (`next_step_s`;
    `first_step_s` before any step was timed) would pass it and the hold does not grow to cover
    it (an `Allowance` with `grow`).
    `ignore_eos`: decode through EOS and loops (calibration measures full lengths).
    `decoding`: the degeneration guard, penalties and extra stop strings (default: the guard on,
    no penalty; `workers.runtime.decoding.decoding_settings` gives a model's defaults). A loop stops
    the decode with "repetition" on the token that completes it (the text keeps the loop as
    streamed, so streamed pieces still concatenate to it).
    `constraint`: a grammar (`workers.runtime.grammar.TokenConstraint`): before each pick the tokens it
    forbids are masked out, and the decode stops ("stop") once its document is complete; the
    degeneration guard is off under it (the schema bounds the document).
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    decoding = decoding or DecodingSettings()
    if decoding.stop:
        stop = [*(stop or []), *(s for s in decoding.stop if s not in (stop or []))]
    # Under a grammar the schema bounds the output (`workers.runtime.grammar`: a bounded answer is closed at
    # its limit); stopping a loop mid-document would only leave it invalid.
    guard = decoding.repetition_guard and not ignore_eos and constraint is None
    processors = logits_processors(decoding)
    stream = TextStream(tokenizer, on_token, stop) if on_token is not None else None
    stop_criteria = None
    if stop:
        from transformers import StopStringCriteria

        stop_criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop))
    # The stop criteria read only the sequence's last `maximum_token_len` ids.
    tail = list(prompt_ids or [])[-stop_criteria.maximum_token_len :] if stop_criteria is not None else []

    generated: list[int] = []
    logprobs: list[float] = []
    step_s: list[float] = []
    step_cpu_s: list[float] = []
    step_device_s: list[float] = []
    first_token_at = math.nan
    timed_out = False
    out_of_budget = False
    looped = False
    budget = as_allowance(budget_s)
    budget_from = clock() if compute_started is None else compute_started
    no_eos: frozenset[int] = frozenset()
    eos = no_eos if ignore_eos else eos
    grammar: Any = constraint if constraint is not None else _Unconstrained()
    grammar_error: str | None = None
    logits = first_logits
    while True:
        if processors and generated:
            logits = _processed(processors, generated, logits)
        logits = grammar.mask(logits)
        token = pick(logits)
        generated.append(token)
        logprobs.append(token_logprob(logits, token))
        if math.isnan(first_token_at):
            first_token_at = time.perf_counter()
        if stream is not None:
            stream.add(token)
        grammar_done, grammar_error = _grammar_step(grammar, token)
        done = (
            token in eos or len(generated) >= max_new_tokens or (stream is not None and stream.error is not None)
            or grammar_done
        )
        if stop_criteria is not None and not done:
            tail = (tail + [token])[-stop_criteria.maximum_token_len :]
            done = bool(stop_criteria(torch.tensor([tail]), None)[0])
        if guard and not done:
            looped = done = _looping(generated, tokenizer, decoding)
        # Checked whatever else ended it, as transformers evaluates all its stopping criteria.
        timed_out = time.perf_counter() > deadline
        if done or timed_out:
            break
        if budget is not None:
            expected = next_step_s(step_device_s, first_step_s)
            if not budget.covers(clock() - budget_from + expected, expected):
                out_of_budget = True
                break
        s0, c0, d0 = time.perf_counter(), time.process_time(), clock()
        logits = step(token)
        step_s.append(time.perf_counter() - s0)
        step_cpu_s.append(time.process_time() - c0)
        step_device_s.append(clock() - d0)

    text, stop_hit = truncate_at_stop(tokenizer.decode(generated, skip_special_tokens=True), stop)
    callback_error = stream.error if stream is not None else None
    cancelled = isinstance(callback_error, GenerationCancelled)
    if cancelled:
        callback_error = None
    finish: FinishReason = "cancelled" if cancelled else finish_reason(
        # A grammar that refused a token (it allowed none of the model's): the output broke, like a stream.
        callback_failed=callback_error is not None or grammar_error is not None,
        stop_hit=stop_hit or grammar.finished, ended_with_eos=generated[-1] in eos,
        n_generated=len(generated), max_new_tokens=max_new_tokens, timed_out=timed_out,
        out_of_budget=out_of_budget, looped=looped,
    )
    if stream is not None:
        stream.finish(text)
    return DecodeResult(
        token_ids=generated,
        text=text,
        finish_reason=finish,
        error=_error_text(callback_error, grammar_error),
        step_s=step_s,
        step_cpu_s=step_cpu_s,
        step_device_s=step_device_s,
        first_token_at=first_token_at,
        budget_s=budget.seconds if budget is not None else None,
        repetition_tokens_saved=max_new_tokens - len(generated) if finish == "repetition" else 0,
        token_logprobs=logprobs,
    )


class _Unconstrained:
    """No grammar: every token allowed, never finished."""

    finished = False
    error = None

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def advance(self, token: int) -> bool:
        return True


def _grammar_step(grammar: Any, token: int) -> tuple[bool, str | None]:
    """Feed ``token`` to the grammar -> (its document is complete or it refused, why it refused)."""
    if grammar.advance(token):
        return bool(grammar.finished), None
    return True, grammar.error or f"token {token} refused"


def _error_text(callback_error: BaseException | None, grammar_error: str | None) -> str | None:
    if callback_error is not None:
        return f"on_token failed: {callback_error!r}"
    return f"the grammar refused a token: {grammar_error}" if grammar_error is not None else None


def _processed(processors: list[Any], generated: list[int], logits: torch.Tensor) -> torch.Tensor:
    """`logits` (V,) through the penalty processors, which see the generated ids only."""
    import torch

    ids = torch.tensor([generated], dtype=torch.long, device=logits.device)  # (1, n)
    scores = logits.float()[None]  # (1, V)
    for process in processors:
        scores = process(ids, scores)
    return scores[0]


def _looping(generated: list[int], tokenizer: Any, decoding: DecodingSettings) -> bool:
    """Whether the ids just generated end a loop: a repeated n-gram at the tail, or (on a token that
    ends a line or a sentence) a line or sentence seen `segment_repeats` times. The text is decoded
    only then: cheap."""
    if loop_at_tail(generated, decoding) is not None:
        return True
    if not SEGMENT_END_CHARS.intersection(tokenizer.decode(generated[-1:], skip_special_tokens=True)):
        return False
    return segment_loop(tokenizer.decode(generated, skip_special_tokens=True), decoding) is not None


# Prompts are read this many tokens per forward pass, the wall-time deadline checked between passes, so a
# long prompt stops within the limit plus one chunk (SmolLM2 on one CPU core: ~270 tokens/s, so ~2 s per
# chunk; on a GPU milliseconds). PARSIMONY_PREFILL_CHUNK_TOKENS overrides it per process.
PREFILL_CHUNK_TOKENS = 512


def prefill_chunk_tokens() -> int:
    """The prefill chunk: PARSIMONY_PREFILL_CHUNK_TOKENS, else ``PREFILL_CHUNK_TOKENS``."""
    raw = os.environ.get("PARSIMONY_PREFILL_CHUNK_TOKENS", "").strip()
    value = int(raw) if raw else PREFILL_CHUNK_TOKENS
    if value < 1:
        raise ValueError(f"PARSIMONY_PREFILL_CHUNK_TOKENS must be >= 1, got {value}")
    return value


class PrefillStopped(Exception):
    """The prefill reached its deadline between two chunks: ``prefilled`` of ``total`` prompt tokens read."""

    def __init__(self, *, prefilled: int, total: int) -> None:
        self.prefilled, self.total = prefilled, total
        super().__init__(f"the prefill passed its deadline after {prefilled:,} of {total:,} prompt tokens")


def chunked_prefill(
    model: Any, input_ids: torch.Tensor, cache: Any, *, deadline: float | None = None,
    chunk_tokens: int | None = None, past_tokens: int = 0, **model_kwargs: Any,
) -> Any:
    """Run ``input_ids`` (1, T) through ``model`` into ``cache`` in chunks -> the last chunk's output.

    Each chunk is one forward pass with an all-ones attention mask over the cache so far (``past_tokens``
    already in it) plus the chunk, as the cached decode steps run, so the last position's logits match
    one pass over the whole prompt (to float tolerance; tested). Between chunks, ``deadline`` (a
    ``time.perf_counter()`` value; None: none) is checked: passed, it raises ``PrefillStopped``.
    """
    import torch

    chunk = chunk_tokens or prefill_chunk_tokens()
    total = int(input_ids.shape[1])
    assert total >= 1, "an empty prompt has nothing to prefill"
    out = None
    for start in range(0, total, chunk):
        # Between chunks, as between decode steps: the first always runs (a cost of one chunk).
        if deadline is not None and start > 0 and time.perf_counter() > deadline:
            raise PrefillStopped(prefilled=start, total=total)
        piece = input_ids[:, start : start + chunk]  # (1, ≤ chunk)
        mask = torch.ones((1, past_tokens + start + piece.shape[1]), dtype=torch.long, device=input_ids.device)
        out = model(input_ids=piece, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1,
                    **model_kwargs)
    return out


def causal_lm_steps(
    lm: LoadedModel, prompt_ids: list[int], *, deadline: float | None = None, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, Step]:
    """Prefill `prompt_ids` into a fresh cache -> (the last position's logits (V,), a step function).

    The plain causal LM path, called as transformers' `generate` calls the model (an all-ones
    attention mask, logits of the last position only), so greedy outputs match it token for token.
    The prompt is read in chunks (``chunked_prefill``; a prompt within one chunk is one pass, as
    `generate`'s), checking ``deadline`` between them: ``PrefillStopped`` when it passed.
    Caller holds the model lock and inference mode.
    """
    import torch
    from transformers import DynamicCache

    model, device = lm.model, lm.device
    cache = DynamicCache(config=model.config)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    out = chunked_prefill(model, input_ids, cache, deadline=deadline, chunk_tokens=chunk_tokens)
    mask = torch.ones_like(input_ids)  # (1, T), grows by one per step

    def step(token: int) -> torch.Tensor:
        nonlocal mask
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        nxt = model(input_ids=torch.tensor([[token]], dtype=torch.long, device=device), attention_mask=mask,
                    cache=cache, use_cache=True, logits_to_keep=1)
        return nxt.logits[0, -1]

    return out.logits[0, -1], step


__all__ = [
    "DecodeResult",
    "FinishReason",
    "GenerationCancelled",
    "PREFILL_CHUNK_TOKENS",
    "PickToken",
    "PrefillStopped",
    "Step",
    "TextStream",
    "causal_lm_steps",
    "chunked_prefill",
    "decode",
    "eos_ids",
    "finish_reason",
    "greedy",
    "next_step_s",
    "prefill_chunk_tokens",
    "sampler",
    "token_logprob",
    "truncate_at_stop",
]
