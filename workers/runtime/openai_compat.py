"""A small client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, ...).

Plain httpx, no SDK: we only need /chat/completions, and we need the raw usage numbers the
endpoint reports (including cached prompt tokens) to bill exactly.
The API key is a value: the caller reads it from whichever env var the endpoint names
(`OpenAICompatConfig.with_key_from_env` does that and fails loudly when it is unset).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from workers.runtime.net_guard import NetworkPolicy, blocked_message, guarded_transport


class EndpointError(Exception):
    """The endpoint refused or failed a request. `status` is None for transport failures."""

    def __init__(
        self, message: str, *, status: int | None = None, body: str | None = None, partial: str = "",
        blocked: bool = False,
    ) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.body = body
        # Text already streamed before a mid-stream failure (the caller still pays for it).
        self.partial = partial
        # The network policy refused the endpoint's address (net_guard): retrying cannot help.
        self.blocked = blocked

    @property
    def retryable(self) -> bool:
        if self.blocked:
            return False
        # Transport errors, rate limits and server errors may pass; 4xx (bad key, bad model) won't.
        return self.status is None or self.status in (408, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class OpenAICompatConfig:
    """How to reach one model on one OpenAI-compatible endpoint.

    `tokenizer`, when given, is any object with `.encode(text) -> list` (an HF tokenizer or a
    tiktoken encoding); `meter.count_tokens` uses it for reservations. `name` is the model name
    reported in results (defaults to `model`).
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never in logs or reprs
    timeout_s: float = 60.0
    name: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)
    extra_headers: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # Set for endpoints a team chose: connections only to public addresses, or those the policy allows.
    network_policy: NetworkPolicy | None = field(default=None, repr=False, compare=False)

    @property
    def display_name(self) -> str:
        return self.name or self.model

    def with_key_from_env(self, env_var: str) -> OpenAICompatConfig:
        value = os.environ.get(env_var, "").strip()
        if not value:
            raise EndpointError(f"API key env var {env_var} is not set for endpoint {self.base_url}")
        return replace(self, api_key=value)


@dataclass
class ChatCompletion:
    """One chat completion as the endpoint reported it.

    `finish_reason` is the endpoint's own string ("stop", "length", ...) or "time_limit" when we
    stopped reading a stream at the caller's deadline. Token counts are None when the endpoint
    did not report usage.
    """

    text: str
    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    model: str = ""
    raw_usage: dict[str, Any] | None = None
    # OpenAI tool calling: [{"id", "type": "function", "function": {"name", "arguments"}}], when asked for.
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def usage_reported(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None


def _parse_usage(usage: dict[str, Any] | None) -> tuple[int | None, int | None, int | None]:
    if not usage:
        return None, None, None
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), cached if cached is not None else 0


def transport_error(exc: BaseException) -> EndpointError:
    """A request that got no response: refused by the network policy (final), or a transport failure."""
    blocked = blocked_message(exc)
    if blocked is not None:
        return EndpointError(f"refused by the network policy: {blocked}", blocked=True)
    return EndpointError(f"request failed: {exc}")


def _error_message(response: httpx.Response) -> str:
    body = response.text
    try:
        data = response.json()
    except ValueError:
        return body[:500] or response.reason_phrase
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if err:
        return str(err)
    return body[:500]


class OpenAICompatClient:
    """Chat completions against one endpoint. Use as a context manager, or call `close()`."""

    def __init__(self, config: OpenAICompatConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"Content-Type": "application/json", **config.extra_headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        if transport is None and config.network_policy is not None:
            transport = guarded_transport(config.network_policy)
        self._http = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> OpenAICompatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _payload(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str] | None,
        stream: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        # max_tokens is always sent: an unbounded completion is an unbounded bill.
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": temperature,
            "stream": stream,
        }
        if stop:
            payload["stop"] = list(stop)
        if tools:
            payload["tools"] = list(tools)
        if stream:
            # Without this, streaming responses carry no usage at all.
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _timeout(self, timeout_s: float | None) -> httpx.Timeout:
        return httpx.Timeout(timeout_s if timeout_s is not None else self.config.timeout_s)

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        timeout_s: float | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> ChatCompletion:
        """Non-streaming chat completion. Raises EndpointError on HTTP or transport failure.

        `tools` (OpenAI function definitions) are sent as given; the reply's tool calls come
        back on `ChatCompletion.tool_calls`.
        """
        payload = self._payload(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop, stream=False, tools=tools
        )
        try:
            response = self._http.post("/chat/completions", json=payload, timeout=self._timeout(timeout_s))
        except httpx.TimeoutException as exc:
            raise EndpointError(f"timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        if response.status_code >= 400:
            raise EndpointError(_error_message(response), status=response.status_code, body=response.text)
        try:
            data = response.json()
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(
                f"malformed response: {response.text[:500]}", status=response.status_code
            ) from exc
        prompt, completion, cached = _parse_usage(data.get("usage"))
        return ChatCompletion(
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            model=data.get("model") or self.config.model,
            raw_usage=data.get("usage"),
            tool_calls=(choice.get("message") or {}).get("tool_calls") or None,
        )

    def chat_stream(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        timeout_s: float | None = None,
        on_text: Callable[[str], None] | None = None,
        deadline: float | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> ChatCompletion:
        """Streaming (SSE) chat completion; `on_text` gets each content piece as it arrives.

        `deadline` is a `time.monotonic()` instant: past it we stop reading and return what
        arrived with finish_reason "time_limit" (usage then is usually missing: the endpoint
        sends it in the last chunk). Errors before the first byte raise EndpointError; an error
        event in the middle of the stream raises too, with the partial text on `exc.partial`.
        """
        payload = self._payload(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop, stream=True, tools=tools
        )
        pieces: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        model = self.config.model
        try:
            with self._http.stream(
                "POST", "/chat/completions", json=payload, timeout=self._timeout(timeout_s)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise EndpointError(
                        _error_message(response), status=response.status_code, body=response.text
                    )
                for event in _sse_events(response.iter_lines()):
                    if event.get("error"):
                        err = event["error"]
                        raise EndpointError(
                            str(err.get("message") if isinstance(err, dict) else err), partial="".join(pieces)
                        )
                    model = event.get("model") or model
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            pieces.append(piece)
                            if on_text is not None:
                                on_text(piece)
                        for delta_call in (choice.get("delta") or {}).get("tool_calls") or []:
                            _merge_tool_call(calls, delta_call)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                    if deadline is not None and time.monotonic() > deadline and usage is None:
                        finish_reason = "time_limit"
                        break
        except httpx.TimeoutException as exc:
            raise EndpointError(f"timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        prompt, completion, cached = _parse_usage(usage)
        return ChatCompletion(
            text="".join(pieces),
            finish_reason=finish_reason or "stop",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            model=model,
            raw_usage=usage,
            tool_calls=[calls[i] for i in sorted(calls)] or None,
        )


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Streamed tool calls arrive in pieces keyed by index: concatenate the argument text."""
    index = int(delta.get("index", len(calls)))
    call = calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON object of each `data:` event until `[DONE]` (SSE, one JSON per event)."""
    buffer: list[str] = []
    for line in lines:
        if line.startswith(":"):  # SSE comment / keep-alive
            continue
        if line.startswith("data:"):
            buffer.append(line[5:].lstrip(" "))
            continue
        if line.strip() == "" and buffer:
            data = "\n".join(buffer)
            buffer = []
            if data.strip() == "[DONE]":
                return
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise EndpointError(f"malformed stream event: {data[:200]}") from exc
    if buffer:
        data = "\n".join(buffer)
        if data.strip() != "[DONE]":
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise EndpointError(f"malformed stream event: {data[:200]}") from exc
