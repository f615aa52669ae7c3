"""A fake OpenAI-compatible endpoint on loopback for tests and benchmarks (stdlib only).

``POST /v1/chat/completions``, streamed (SSE, with ``stream_options.include_usage``) or not, always
with a usage block. Unlike a polite provider it can over-report: ``prompt_token_factor`` scales the
prompt tokens it claims (2.0 = twice what it read), so the caller's reservation bound can be beaten
by the bill, and ``chunk_delay_s`` streams slowly, so a call stays in flight while others race.

Its honest prompt count is ceil(UTF-8 bytes / 4) per message content, plus 4 per message and 3 for
the reply priming (the ChatML-style overhead); completion tokens are the reply's chunks × their size,
cut at ``max_tokens`` (finish_reason "length" then).

    with FakeOpenAIServer(prompt_token_factor=2.0, chunk_delay_s=0.05) as server:
        ModelEndpoint(kind="openai", base_url=server.base_url, ...)
        ...
        server.request_count
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = "The answer is in the context you were given and it is short."


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def honest_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """What the fake counts as the prompt it read (before ``prompt_token_factor``)."""
    content = sum(math.ceil(len(_content_text(m.get("content")).encode()) / 4) for m in messages)
    return content + 4 * len(messages) + 3


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server; a context manager exposing ``base_url`` (…/v1)."""

    def __init__(
        self,
        prompt_token_factor: float = 1.0,
        chunk_delay_s: float = 0.0,
        reply: str = DEFAULT_REPLY,
        tokens_per_chunk: int = 1,
    ) -> None:
        if tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be >= 1")
        self.prompt_token_factor = prompt_token_factor
        self.chunk_delay_s = chunk_delay_s
        self.reply = reply
        self.tokens_per_chunk = tokens_per_chunk
        self._lock = threading.Lock()
        self._count = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeOpenAIServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running (use it as a context manager)")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    # ------------------------------------------------------------------ the model

    def _counted(self) -> None:
        with self._lock:
            self._count += 1

    def chunks(self, max_tokens: int) -> tuple[list[str], int, str]:
        """(text pieces, completion tokens, finish_reason) for a reply capped at ``max_tokens``."""
        words = self.reply.split()
        pieces: list[str] = []
        tokens = 0
        for i in range(0, len(words), self.tokens_per_chunk):
            if tokens >= max_tokens:
                return pieces, tokens, "length"
            group = words[i : i + min(self.tokens_per_chunk, max_tokens - tokens)]
            pieces.append((" " if pieces else "") + " ".join(group))
            tokens += len(group)
        return pieces, tokens, "stop"

    def usage(self, messages: list[dict[str, Any]], completion_tokens: int) -> dict[str, int]:
        prompt = math.ceil(honest_prompt_tokens(messages) * self.prompt_token_factor)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }


def _handler(fake: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            fake._counted()
            messages = body.get("messages") or []
            pieces, completion, finish = fake.chunks(int(body.get("max_tokens") or 1 << 30))
            usage = fake.usage(messages, completion)
            if body.get("stream"):
                return self._stream(body, pieces, finish, usage)
            time.sleep(fake.chunk_delay_s * len(pieces))
            self._json(
                200,
                {
                    "id": "cmpl-fake",
                    "object": "chat.completion",
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(pieces)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(
            self, body: dict[str, Any], pieces: list[str], finish: str, usage: dict[str, int]
        ) -> None:
            base = {"id": "cmpl-fake", "object": "chat.completion.chunk", "model": body.get("model", "fake")}
            events: list[dict[str, Any]] = [
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            ]
            events += [
                {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                for p in pieces
            ]
            events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": usage})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for i, event in enumerate(events):
                    if 0 < i <= len(pieces):
                        time.sleep(fake.chunk_delay_s)  # slow content chunks: the call stays in flight
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (its deadline)
            self.close_connection = True

    return Handler


__all__ = ["FakeOpenAIServer", "honest_prompt_tokens"]
