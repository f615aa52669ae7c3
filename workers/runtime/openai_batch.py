"""The OpenAI Batch API, for any provider that offers it (OpenAI, and compatible servers): one JSONL file of
chat requests uploaded (``/v1/files``, purpose "batch"), one batch created on it (``/v1/batches``, a 24 h
completion window), polled, its output and error files read back. Plain data in and out (no Django): the
caller stores the ids and settles the rows (apps/bulk/provider_batch.py).

Submitting is two steps the caller records one at a time, so that a worker that dies between them never
makes a second batch: the input file is uploaded (its id stored), then ``batch_submit`` first looks for a
batch already made on that file (``batch_find``) and creates one only when there is none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from workers.runtime.openai_compat import EndpointError, OpenAICompatConfig, transport_error

CHAT_URL = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# A batch in one of these states changes no more: its output and error files are final.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchRequest:
    """One row's chat request: ``custom_id`` names the row in the output."""

    custom_id: str
    messages: list[dict[str, Any]]
    max_tokens: int
    stop: list[str] | None = None

    def line(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": self.messages, "max_tokens": int(self.max_tokens),
                                "temperature": 0.0}
        if self.stop:
            body["stop"] = list(self.stop)
        return {"custom_id": self.custom_id, "method": "POST", "url": CHAT_URL, "body": body}


@dataclass(frozen=True)
class BatchState:
    """A provider batch as last reported."""

    id: str
    status: str
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    total: int = 0
    errors: list[str] = field(default_factory=list)  # why the batch itself failed (its input was refused)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class BatchResult:
    """One row's outcome: an answer and its usage, or the provider's error message."""

    custom_id: str
    ok: bool
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_reported: bool = False
    error: str = ""


def batch_jsonl(requests: list[BatchRequest], *, model: str) -> bytes:
    """The input file: one JSON object per line."""
    ids = [r.custom_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("custom ids must be unique within a batch")
    return b"".join(json.dumps(r.line(model), ensure_ascii=False).encode() + b"\n" for r in requests)


def _client(config: OpenAICompatConfig) -> Any:
    """The SDK client for one call; used as ``with _client(config) as client:`` (its exit closes the HTTP client)."""
    from openai import OpenAI

    # The SDK refuses to start without a key; a keyless local server gets a placeholder (never sent anywhere
    # else: the base URL is the endpoint's own).
    http_client = None
    if config.network_policy is not None:
        # A team's endpoint: the same connect-time address guard as chat calls (workers/runtime/net_guard.py).
        import httpx

        from workers.runtime.net_guard import guarded_transport

        http_client = httpx.Client(transport=guarded_transport(config.network_policy), timeout=config.timeout_s)
    return OpenAI(base_url=config.base_url.rstrip("/"), api_key=config.api_key or "none",
                  timeout=config.timeout_s, max_retries=2, default_headers=config.extra_headers or None,
                  # openai 3.x annotates httpx2.Client; an httpx.Client serves the same calls (the guarded
                  # job runs end to end in tests/apps/bulk/test_provider_batch.py).
                  http_client=http_client)  # type: ignore[arg-type]


def _endpoint_error(exc: Exception) -> EndpointError:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return EndpointError(str(getattr(exc, "message", exc)), status=exc.status_code,
                             body=getattr(exc.response, "text", None))
    # No response: a refused address (final: the job fails, docs/operations.md) or a transport failure.
    return transport_error(exc)


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    import openai

    try:
        return fn(*args, **kwargs)
    except openai.OpenAIError as exc:
        raise _endpoint_error(exc) from exc


def _state(batch: Any) -> BatchState:
    counts = getattr(batch, "request_counts", None)
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return BatchState(
        id=batch.id, status=str(batch.status), input_file_id=batch.input_file_id or "",
        output_file_id=batch.output_file_id or None, error_file_id=batch.error_file_id or None,
        completed=int(getattr(counts, "completed", 0) or 0), failed=int(getattr(counts, "failed", 0) or 0),
        total=int(getattr(counts, "total", 0) or 0),
        errors=[f"{getattr(e, 'line', None) or '-'}: {getattr(e, 'message', e)}" for e in errors],
    )


def file_upload(config: OpenAICompatConfig, *, data: bytes, filename: str) -> str:
    """Upload the input file (purpose "batch"); its id. EndpointError when the provider refuses it."""
    with _client(config) as client:
        return str(_call(client.files.create, file=(filename, data, "application/jsonl"), purpose="batch").id)


def batch_find(config: OpenAICompatConfig, *, input_file_id: str) -> BatchState | None:
    """The batch already made on ``input_file_id``, if any (the newest first, as the provider lists them)."""
    with _client(config) as client:
        for batch in _call(client.batches.list, limit=100):
            if batch.input_file_id == input_file_id:
                return _state(batch)
        return None


def batch_submit(config: OpenAICompatConfig, *, input_file_id: str, metadata: dict[str, str]) -> BatchState:
    """The batch on ``input_file_id``: the one already made on it (a resumed submit), else a new one."""
    existing = batch_find(config, input_file_id=input_file_id)
    if existing is not None:
        return existing
    with _client(config) as client:
        return _state(_call(client.batches.create, input_file_id=input_file_id, endpoint=CHAT_URL,
                            completion_window=COMPLETION_WINDOW, metadata=metadata))


def batch_get(config: OpenAICompatConfig, *, batch_id: str) -> BatchState:
    with _client(config) as client:
        return _state(_call(client.batches.retrieve, batch_id))


def batch_cancel(config: OpenAICompatConfig, *, batch_id: str) -> BatchState:
    """Ask the provider to cancel the batch (it goes to "cancelling", then "cancelled")."""
    with _client(config) as client:
        return _state(_call(client.batches.cancel, batch_id))


def _file_text(client: Any, file_id: str | None) -> str:
    if not file_id:
        return ""
    return str(_call(client.files.content, file_id).text)


def _error_text(body: Any, fallback: str) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or err)
    return str(err or fallback)


def result_parse(line: dict[str, Any]) -> BatchResult:
    """One line of an output or error file."""
    custom_id = str(line.get("custom_id") or "")
    response = line.get("response") or {}
    if line.get("error") or int(response.get("status_code") or 0) != 200:
        status = response.get("status_code")
        message = _error_text(line, "") or _error_text(response.get("body"), f"status {status}")
        return BatchResult(custom_id=custom_id, ok=False, error=message)
    body = response.get("body") or {}
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        return BatchResult(custom_id=custom_id, ok=False, error=f"malformed response: {json.dumps(body)[:300]}")
    usage = body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return BatchResult(
        custom_id=custom_id, ok=True, text=(choice.get("message") or {}).get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop", prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0), cached_tokens=int(cached),
        usage_reported="prompt_tokens" in usage and "completion_tokens" in usage,
    )


def batch_results(config: OpenAICompatConfig, *, state: BatchState) -> dict[str, BatchResult]:
    """custom_id -> result, from the finished batch's output and error files (an error line wins)."""
    with _client(config) as client:
        results: dict[str, BatchResult] = {}
        for file_id in (state.output_file_id, state.error_file_id):
            for raw in _file_text(client, file_id).splitlines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line we cannot read names no row: that row ends "no answer"
                result = result_parse(line)
                if result.custom_id and (result.custom_id not in results or not result.ok):
                    results[result.custom_id] = result
        return results


__all__ = [
    "COMPLETION_WINDOW", "TERMINAL", "BatchRequest", "BatchResult", "BatchState", "batch_cancel", "batch_find",
    "batch_get", "batch_jsonl", "batch_results", "batch_submit", "file_upload", "result_parse",
]
