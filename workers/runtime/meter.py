"""The meter: the one entry point for every model call, and the numbers we bill from.

`generate()` runs one chat completion on a local model (`LoadedModel`), an OpenAI-compatible
endpoint or the `EchoTarget` test double under two hard caps (output tokens, wall time) and
returns a `GenerationResult` with the token counts and device seconds the caller bills. Local
models count exactly: prompt_tokens are the chat template's ids (what the model read),
completion_tokens the ids generated, a final EOS included (it cost a step); their decoding is
`workers.runtime.decode`, shared with the other local generation paths.

The wall-time limit bounds a local call from when it holds the model: the prompt is prefilled in
chunks with the deadline checked between them (a prompt out of time ends with finish_reason
"time_limit", 0 tokens generated, the chunks read billed), then between decode steps.

`budget_s` (the device-seconds the caller's hold can still pay for) bounds local compute: a
prefill expected to exceed it does not start (0 tokens, finish_reason "budget"), decoding stops
before a step that would pass it ("budget"), and the device seconds reported are clamped to it,
so a bill computed from them never exceeds the hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from workers.runtime.batching import BatchEngine, batch_engine
from workers.runtime.decode import (
    Allowance,
    FinishReason,
    GenerationCancelled,
    PickToken,
    PrefillStopped,
    as_allowance,
    decode,
    decoding_pick,
    eos_ids,
    truncate_at_stop,
)
from workers.runtime.decoding import DecodingSettings, decoding_settings
from workers.runtime.device_clock import device_clock
from workers.runtime.fast_lm import local_steps
from workers.runtime.local_lm import LoadedModel
from workers.runtime.openai_compat import (
    ChatCompletion,
    EndpointError,
    OpenAICompatClient,
    OpenAICompatConfig,
)
from workers.runtime.token_count import chat_template_ids, chat_tokens_bound, content_text, text_tokens

# Estimates for endpoints without a known tokenizer (compression budgets, savings; never reservations).
_CHAT_TOKENS_PER_MESSAGE = 4
_CHAT_TOKENS_PRIMING = 3
_CHARS_PER_TOKEN = 4


@dataclass
class GenerationResult:
    """What one model call produced and consumed.

    gpu_s: accelerator seconds of local model work (CUDA, measured between synchronizes); 0.0
    on CPU and for remote endpoints. compute_s: device-seconds of local model compute on the
    billing clock (`workers.runtime.device_clock`: the thread's CPU time on a one-thread CPU, wall
    time held on a GPU; never waiting for the model lock), so local work is priced per second;
    0.0 for remote endpoints. usage_estimated: True when the token counts are our estimate
    because the endpoint did not report them (timeouts, dropped streams, no usage field).
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    wall_s: float
    gpu_s: float
    compute_s: float
    model: str
    usage_estimated: bool = False
    error: str | None = None
    # OpenAI-compatible endpoints asked with `tools`: the tool calls the model made, as sent.
    tool_calls: list[dict[str, Any]] | None = None
    # Local models stopped as a loop ("repetition"): the output tokens of the cap not spent.
    repetition_tokens_saved: int = 0
    # Local models: each generated token's log-probability (`workers.runtime.decode`); None: not known.
    token_logprobs: list[float] | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class EchoTarget:
    """TEST DOUBLE, not a model: deterministic, instant, no torch.

    Replies with `reply` (or, when None, the last user message) word by word; tokens are
    whitespace-separated words, both for prompts (all message contents) and completions.
    `seconds_per_token` sleeps per word so wall-time limits can be exercised; `fail_with`
    makes every call raise EndpointError(fail_with, status=503) to exercise error paths.
    Meant for fast unit tests of the Django side; the runtime's own tests use the real model.
    """

    name: str = "echo"
    reply: str | None = None
    seconds_per_token: float = 0.0
    fail_with: str | None = None


Target = Union[LoadedModel, OpenAICompatConfig, OpenAICompatClient, EchoTarget]  # noqa: UP007


# ---------------------------------------------------------------------------- token counting


_content_text = content_text


def _chat_ids(target: LoadedModel, messages: list[dict[str, Any]]) -> list[int]:
    return chat_template_ids(target.tokenizer, messages)


def _openai_config(target: OpenAICompatConfig | OpenAICompatClient) -> OpenAICompatConfig:
    return target.config if isinstance(target, OpenAICompatClient) else target


def count_tokens(target: Target, text: str) -> int:
    """Tokens in `text` for `target`.

    Exact for local models (their tokenizer, no special tokens added). For OpenAI-compatible
    endpoints: exact with the config's `tokenizer` (an HF tokenizer or a tiktoken encoding), else
    an estimate of ceil(len(text) / 4), the usual English average, for compression budgets and
    savings; reservations use `workers.runtime.token_count`'s bounds instead. EchoTarget: words.
    """
    if isinstance(target, LoadedModel):
        return len(target.tokenizer.encode(text, add_special_tokens=False))
    if isinstance(target, EchoTarget):
        return len(text.split())
    tokenizer = _openai_config(target).tokenizer
    if tokenizer is None:
        return math.ceil(len(text) / _CHARS_PER_TOKEN)
    return text_tokens(tokenizer, text)


def count_chat_tokens(target: Target, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> int:
    """Prompt tokens for a chat, as the model would read it (with the generation prompt).

    Exact for local models (their chat template). For endpoints with a `tokenizer`:
    `token_count.chat_tokens_bound` (exact contents plus a bounded chat overhead); without one,
    `count_tokens`' estimate over contents plus 4 per message and 3 for the reply priming.
    EchoTarget: words over all contents.
    """
    if isinstance(target, LoadedModel):
        return len(_chat_ids(target, messages))
    if isinstance(target, EchoTarget):
        return sum(len(_content_text(m.get("content")).split()) for m in messages)
    tokenizer = _openai_config(target).tokenizer
    if tokenizer is not None:
        return chat_tokens_bound(tokenizer, messages, tools)
    content = sum(count_tokens(target, _content_text(m.get("content"))) for m in messages)
    return content + _CHAT_TOKENS_PER_MESSAGE * len(messages) + _CHAT_TOKENS_PRIMING


# ---------------------------------------------------------------------------- entry point


def generate(
    *,
    target: Target,
    messages: list[dict[str, Any]],
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None = None,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    tools: list[dict[str, Any]] | None = None,
    budget_s: float | Allowance | None = None,
    expected_prefill_s: float = 0.0,
    expected_step_s: float = 0.0,
    decoding: DecodingSettings | None = None,
    grammar: dict[str, Any] | None = None,
) -> GenerationResult:
    """Run one chat completion under hard caps and report what it used.

    `grammar`: a JSON schema a local model's output must follow (`workers.runtime.grammar`: applied as
    a token mask, the decode ends when the document is complete); remote endpoints and the echo
    ignore it (an endpoint's own tool calling is asked for with `tools`).

    `decoding`: a local model's degeneration guard, penalties and extra stop strings (None: the
    model's defaults, `workers.runtime.decoding.decoding_settings`); other targets ignore it.

    `budget_s`: device-seconds the hold still covers (None: unbounded), or an `Allowance` that can
    grow the hold as decoding goes on; `expected_prefill_s` / `expected_step_s`: the cost model's
    prediction for this prompt's prefill and one decode step (before the first step is timed).
    Reported `compute_s` / `gpu_s` never exceed what the hold covered at the end.

    `on_token` receives text pieces as they are produced; their concatenation equals the final
    `text`. Temperature 0 means greedy decoding. `stop` strings end generation and are not
    included in `text` (the tokens that produced them are still counted). `tools` (OpenAI
    function definitions) reach OpenAI-compatible endpoints only, whose tool calls come back on
    `GenerationResult.tool_calls`; local models and the echo ignore them.
    Raises ValueError for bad caps and EndpointError when an endpoint fails before producing
    anything billable; failures after partial output return finish_reason "error".
    """
    if max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
    if not wall_time_limit_s > 0:
        raise ValueError(f"wall_time_limit_s must be > 0, got {wall_time_limit_s}")
    allowance = as_allowance(budget_s)
    started = time.perf_counter()
    if isinstance(target, LoadedModel):
        result = _generate_local(
            target, messages, max_output_tokens, wall_time_limit_s, on_token, temperature, stop,
            _Budget(allowance, expected_prefill_s, expected_step_s), decoding, grammar,
        )
    elif isinstance(target, EchoTarget):
        result = _generate_echo(target, messages, max_output_tokens, wall_time_limit_s, on_token, stop)
    elif isinstance(target, (OpenAICompatConfig, OpenAICompatClient)):
        result = _generate_openai(
            target, messages, max_output_tokens, wall_time_limit_s, on_token, temperature, stop, tools
        )
    else:
        raise TypeError(f"unsupported generation target: {type(target).__name__}")
    result.wall_s = time.perf_counter() - started
    if allowance is not None:
        # The clamp: what the last step overran its prediction by is not billed (docs/costs.md).
        result.compute_s = min(result.compute_s, allowance.seconds)
        result.gpu_s = min(result.gpu_s, allowance.seconds)
    return result


@dataclass(frozen=True)
class _Budget:
    seconds: Allowance | None = None
    expected_prefill_s: float = 0.0
    expected_step_s: float = 0.0


# ---------------------------------------------------------------------------- local models


def _generate_local(
    target: LoadedModel,
    messages: list[dict[str, Any]],
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None,
    temperature: float,
    stop: list[str] | None,
    budget: _Budget | None = None,
    decoding: DecodingSettings | None = None,
    grammar: dict[str, Any] | None = None,
) -> GenerationResult:
    import torch

    budget = budget or _Budget()
    prompt_ids = _chat_ids(target, messages)
    constraint = None
    if grammar is not None:
        from workers.runtime.grammar import json_grammar

        # Compiled before the model is held (milliseconds; cached per schema and tokenizer).
        constraint = json_grammar(grammar, target.tokenizer).constraint()
    if budget.seconds is not None and not budget.seconds.covers(
        budget.expected_prefill_s, budget.expected_step_s
    ):
        # The hold cannot pay for reading the prompt: run nothing, bill nothing.
        return GenerationResult(
            text="", finish_reason="budget", prompt_tokens=0, completion_tokens=0, cached_tokens=0,
            wall_s=0.0, gpu_s=0.0, compute_s=0.0, model=target.name,
            error=f"the hold covers {budget.seconds.seconds:.3f} device-seconds, the prefill needs "
            f"~{budget.expected_prefill_s:.3f}",
        )
    pick: PickToken = decoding_pick(target, decoding, temperature)
    on_cuda = target.device.startswith("cuda")
    engine = batch_engine(target)
    if engine is not None:
        return _generate_batched(
            engine, target, prompt_ids, max_output_tokens, wall_time_limit_s, on_token, stop, pick, budget,
            decoding, constraint,
        )
    clock = device_clock(target.device)
    with target.lock:
        # The deadline starts once we hold the model: time queued behind another call is not
        # this call's compute (wall_s still includes it). Compute is billed on the device clock.
        t0, c0 = time.perf_counter(), clock()
        if on_cuda:
            torch.cuda.synchronize(target.device)
        with torch.inference_mode():
            try:
                first_logits, step = local_steps(target, prompt_ids, deadline=t0 + wall_time_limit_s,
                                                 max_new_tokens=max_output_tokens)
            except PrefillStopped as stopped:
                # The prompt ran out of time before its last chunk: no token, the chunks read are billed.
                if on_cuda:
                    torch.cuda.synchronize(target.device)
                compute_s = clock() - c0
                return GenerationResult(
                    text="", finish_reason="time_limit", prompt_tokens=stopped.prefilled, completion_tokens=0,
                    cached_tokens=0, wall_s=0.0, gpu_s=compute_s if on_cuda else 0.0, compute_s=compute_s,
                    model=target.name, error=f"{stopped} (wall-time limit {wall_time_limit_s:g} s)",
                )
            decoded = decode(
                first_logits=first_logits, step=step, tokenizer=target.tokenizer, eos=eos_ids(target),
                max_new_tokens=max_output_tokens, deadline=t0 + wall_time_limit_s, on_token=on_token,
                stop=stop, prompt_ids=prompt_ids, pick=pick, budget_s=budget.seconds, compute_started=c0,
                first_step_s=budget.expected_step_s, clock=clock,
                decoding=decoding or decoding_settings(target.name), constraint=constraint,
            )
        if on_cuda:
            torch.cuda.synchronize(target.device)
        compute_s = clock() - c0
    return _decoded_result(decoded, target=target, prompt_ids=prompt_ids, compute_s=compute_s, on_cuda=on_cuda)


def _decoded_result(
    decoded: Any, *, target: LoadedModel, prompt_ids: list[int], compute_s: float, on_cuda: bool
) -> GenerationResult:
    """A local decode's result, billed ``compute_s`` of device time (the GPU's when on CUDA)."""
    return GenerationResult(
        text=decoded.text,
        finish_reason=decoded.finish_reason,
        prompt_tokens=len(prompt_ids),
        completion_tokens=len(decoded.token_ids),
        cached_tokens=0,
        wall_s=0.0,
        gpu_s=compute_s if on_cuda else 0.0,
        compute_s=compute_s,
        model=target.name,
        error=decoded.error,
        repetition_tokens_saved=decoded.repetition_tokens_saved,
        token_logprobs=decoded.token_logprobs,
    )


def _generate_batched(
    engine: BatchEngine,
    target: LoadedModel,
    prompt_ids: list[int],
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None,
    stop: list[str] | None,
    pick: PickToken,
    budget: _Budget,
    decoding: DecodingSettings | None,
    constraint: Any,
) -> GenerationResult:
    """``_generate_local`` through the process's batching engine (``workers.runtime.batching``): the same
    decode loop on this thread, the forward passes shared with concurrent requests; billed this request's
    metered share of the engine's device time (its prefill plus its share of each step it was in)."""
    on_cuda = target.device.startswith("cuda")
    deadline = time.perf_counter() + wall_time_limit_s
    try:
        request = engine.open(prompt_ids, max_new_tokens=max_output_tokens, deadline=deadline)
    except PrefillStopped as stopped:
        compute_s = stopped.request.device_s  # type: ignore[attr-defined]  # set by the engine
        return GenerationResult(
            text="", finish_reason="time_limit", prompt_tokens=stopped.prefilled, completion_tokens=0,
            cached_tokens=0, wall_s=0.0, gpu_s=compute_s if on_cuda else 0.0, compute_s=compute_s,
            model=target.name, error=f"{stopped} (wall-time limit {wall_time_limit_s:g} s)",
        )
    try:
        decoded = decode(
            first_logits=request.first_logits, step=request.step, tokenizer=target.tokenizer, eos=eos_ids(target),
            max_new_tokens=max_output_tokens, deadline=deadline, on_token=on_token, stop=stop,
            prompt_ids=prompt_ids, pick=pick, budget_s=budget.seconds, compute_started=0.0,
            first_step_s=budget.expected_step_s, clock=request.clock,
            decoding=decoding or decoding_settings(target.name), constraint=constraint,
        )
    finally:
        request.close()
    return _decoded_result(decoded, target=target, prompt_ids=prompt_ids, compute_s=request.device_s, on_cuda=on_cuda)


# ---------------------------------------------------------------------------- endpoints


def _generate_openai(
    target: OpenAICompatConfig | OpenAICompatClient,
    messages: list[dict[str, Any]],
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None,
    temperature: float,
    stop: list[str] | None,
    tools: list[dict[str, Any]] | None = None,
) -> GenerationResult:
    config = _openai_config(target)
    client = target if isinstance(target, OpenAICompatClient) else OpenAICompatClient(config)
    # httpx timeouts are per read, so for streams we also check a deadline between chunks.
    timeout_s = min(config.timeout_s, wall_time_limit_s)
    deadline = time.monotonic() + wall_time_limit_s
    streamed: list[str] = []

    cancelled: list[GenerationCancelled] = []

    def on_text(piece: str) -> None:
        streamed.append(piece)
        if on_token is not None and not cancelled:
            try:
                on_token(piece)
            except GenerationCancelled as exc:  # stop reading: the endpoint is billed for what it sent
                cancelled.append(exc)
                raise EndpointError("cancelled", partial="".join(streamed)) from exc

    try:
        if on_token is not None:
            completion = client.chat_stream(
                messages,
                max_tokens=max_output_tokens,
                temperature=temperature,
                stop=stop,
                timeout_s=timeout_s,
                on_text=on_text,
                deadline=deadline,
                **({"tools": tools} if tools else {}),
            )
        else:
            completion = client.chat(
                messages,
                max_tokens=max_output_tokens,
                temperature=temperature,
                stop=stop,
                timeout_s=timeout_s,
                **({"tools": tools} if tools else {}),
            )
    except EndpointError as exc:
        partial = exc.partial or "".join(streamed)
        timed_out = exc.status is None and "timed out" in exc.message
        if not partial and not timed_out:
            raise  # nothing billable happened: let the caller retry or fail
        # The endpoint did work we cannot see: bill our estimate. A timed-out request may
        # have run to its cap on the server, so assume it did.
        completion_est = count_tokens(target, partial) if partial else max_output_tokens
        return GenerationResult(
            text=partial,
            finish_reason="cancelled" if cancelled else "time_limit" if timed_out else "error",
            prompt_tokens=count_chat_tokens(target, messages),
            completion_tokens=completion_est,
            cached_tokens=0,
            wall_s=0.0,
            gpu_s=0.0,
            compute_s=0.0,
            model=config.display_name,
            usage_estimated=True,
            error=str(exc),
        )
    finally:
        if client is not target:
            client.close()
    return _from_completion(target, config, messages, completion)


def _from_completion(
    target: OpenAICompatConfig | OpenAICompatClient,
    config: OpenAICompatConfig,
    messages: list[dict[str, Any]],
    completion: ChatCompletion,
) -> GenerationResult:
    finish: FinishReason
    if completion.finish_reason in ("length", "time_limit"):
        finish = completion.finish_reason  # type: ignore[assignment]
    else:
        finish = "stop"  # "stop", "content_filter", "tool_calls", ...: the model ended it
    estimated = not completion.usage_reported
    return GenerationResult(
        text=completion.text,
        finish_reason=finish,
        prompt_tokens=(
            completion.prompt_tokens
            if completion.prompt_tokens is not None
            else count_chat_tokens(target, messages)
        ),
        completion_tokens=(
            completion.completion_tokens
            if completion.completion_tokens is not None
            else count_tokens(target, completion.text)
        ),
        cached_tokens=completion.cached_tokens or 0,
        wall_s=0.0,
        gpu_s=0.0,
        compute_s=0.0,
        model=config.display_name,
        usage_estimated=estimated,
        tool_calls=completion.tool_calls,
    )


# ---------------------------------------------------------------------------- test double


def _generate_echo(
    target: EchoTarget,
    messages: list[dict[str, Any]],
    max_output_tokens: int,
    wall_time_limit_s: float,
    on_token: Callable[[str], None] | None,
    stop: list[str] | None,
) -> GenerationResult:
    if target.fail_with is not None:
        raise EndpointError(target.fail_with, status=503)
    t0 = time.perf_counter()
    if target.reply is not None:
        source = target.reply
    else:
        users = [m for m in messages if m.get("role") == "user"]
        source = _content_text(users[-1].get("content")) if users else ""
    words = source.split()
    # Stop strings are known up front for an echo: cut the reply once, stream up to the cut.
    limit_chars = len(truncate_at_stop(" ".join(words), stop)[0]) if stop else None
    out: list[str] = []
    emitted = ""
    finish: FinishReason = "stop"
    for word in words:
        if len(out) >= max_output_tokens:
            finish = "length"
            break
        if out and time.perf_counter() - t0 > wall_time_limit_s:
            finish = "time_limit"
            break
        if target.seconds_per_token:
            time.sleep(target.seconds_per_token)
        out.append(word)
        text = " ".join(out)[:limit_chars]
        if on_token is not None and len(text) > len(emitted):
            try:
                on_token(text[len(emitted) :])
            except GenerationCancelled:
                emitted, finish = text, "cancelled"
                break
        emitted = text
        if limit_chars is not None and len(" ".join(out)) >= limit_chars:
            break
    out_text = emitted
    compute_s = time.perf_counter() - t0
    return GenerationResult(
        text=out_text,
        finish_reason=finish,
        prompt_tokens=count_chat_tokens(target, messages),
        completion_tokens=len(out),
        cached_tokens=0,
        wall_s=0.0,
        gpu_s=0.0,
        compute_s=compute_s,
        model=target.name,
    )
