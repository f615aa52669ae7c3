"""A fake OpenAI-compatible endpoint on loopback, for tests and benchmarks: a real HTTP server in a thread.

    with FakeOpenAIServer(prompt_token_factor=2.0, chunk_delay_s=0.05) as server:
        endpoint = ModelEndpoint(kind="openai", base_url=server.base_url, remote_model="gpt-4o-mini", ...)

It serves ``GET /v1/models`` when given ``models``, and ``POST /v1/chat/completions`` with ``stream``
true or false (and ``stream_options.include_usage``); it replies with ``reply`` cut to the request's
``max_tokens`` (o200k tokens), streamed in chunks of
``tokens_per_chunk`` tokens ``chunk_delay_s`` apart, and reports

    usage.prompt_tokens = ceil(prompt_token_factor × (o200k tokens of the messages' contents
                                                      + 3 per message + 3))

(OpenAI's cookbook count), i.e. up to ``prompt_token_factor`` times what a real OpenAI model
would bill: factor 1.0 stays within Parsimony's bound, 2.0 makes an overage.
``completion_tokens`` is the o200k count of the reply sent, plus ``extra_completion_tokens``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.local_server import LocalHTTPServer, QuietJSONHandler

DEFAULT_REPLY = "Paris is the capital of France, and it has been for a very long time."


def _encoding() -> Any:
    import tempfile

    from workers.runtime.token_count import tiktoken_encoding

    return tiktoken_encoding("o200k_base", cache_dir=Path(tempfile.gettempdir()) / "parsimony-test-tiktoken")


def cookbook_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The o200k count of the messages' contents + 3 per message + 3 (the figure the fake reports at factor 1)."""
    from workers.runtime.token_count import content_text

    enc = _encoding()
    contents = sum(len(enc.encode_ordinary(content_text(m.get("content")))) for m in messages)
    return contents + 3 * len(messages) + 3


class FakeOpenAIServer(LocalHTTPServer):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 (context manager); ``requests`` counts the calls."""

    def __init__(
        self,
        prompt_token_factor: float = 1.0,
        chunk_delay_s: float = 0.0,
        reply: str = DEFAULT_REPLY,
        tokens_per_chunk: int = 2,
        extra_completion_tokens: int = 0,
        model: str = "gpt-4o-mini",
        models: list[str] | None = None,
    ) -> None:
        self.prompt_token_factor = prompt_token_factor
        self.chunk_delay_s = chunk_delay_s
        self.reply = reply
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.extra_completion_tokens = extra_completion_tokens
        self.model = model
        # ``GET /v1/models`` lists these; None: that route is not served (404), as on some servers.
        self.models = models
        # The Authorization header of each GET /v1/models.
        self.authorizations: list[str | None] = []
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def handler_class(self):
        return _handler(self)

    def __enter__(self) -> FakeOpenAIServer:
        _encoding()  # build the vocabulary before the first request
        return super().__enter__()

    # ------------------------------------------------------------------ the replies

    def usage_for(self, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        prompt = math.ceil(self.prompt_token_factor * cookbook_prompt_tokens(body.get("messages") or []))
        completion = completion_tokens + self.extra_completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def reply_pieces(self, body: dict[str, Any]) -> tuple[list[str], int, str]:
        """(the reply's text pieces, its o200k tokens, finish reason), cut at ``max_tokens``."""
        enc = _encoding()
        ids = enc.encode_ordinary(self.reply)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if limit is not None and len(ids) > int(limit):
            ids, finish = ids[: int(limit)], "length"
        step = self.tokens_per_chunk
        pieces = [enc.decode(ids[i : i + step]) for i in range(0, len(ids), step)]
        return pieces, len(ids), finish

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)


def _handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietJSONHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models" or server.models is None:
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                return
            server.authorizations.append(self.headers.get("Authorization"))
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                         for m in server.models]})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "malformed JSON", "type": "invalid_request_error"}})
                return
            server._record(body)
            if body.get("stream"):
                self._stream(body)
            else:
                pieces, tokens, finish = server.reply_pieces(body)
                self._json(200, {
                    "id": f"chatcmpl-fake-{server.requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or server.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                 "finish_reason": finish}],
                    "usage": server.usage_for(body, tokens),
                })

        def _event(self, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        def _stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            pieces, tokens, finish = server.reply_pieces(body)
            base = {"id": f"chatcmpl-fake-{server.requests}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": body.get("model") or server.model}
            self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
            for piece in pieces:
                if server.chunk_delay_s:
                    time.sleep(server.chunk_delay_s)
                self._event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": server.usage_for(body, tokens)})
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


__all__ = ["DEFAULT_REPLY", "FakeOpenAIServer", "cookbook_prompt_tokens"]
