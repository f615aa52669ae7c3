"""The OpenAI-compatible client and the meter against a tiny local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.local_server import QuietJSONHandler
from workers.runtime.meter import generate
from workers.runtime.openai_compat import EndpointError, OpenAICompatClient, OpenAICompatConfig

USAGE = {
    "prompt_tokens": 21,
    "completion_tokens": 3,
    "total_tokens": 24,
    "prompt_tokens_details": {"cached_tokens": 16},
}
MESSAGES = [{"role": "user", "content": "Say hello"}]


class FakeEndpoint:
    """What the handler should answer next, and the requests it saw."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.pieces = ["Hel", "lo", " there"]
        self.finish_reason = "stop"
        self.usage: dict[str, Any] | None = USAGE
        self.delay_s = 0.0
        self.error_after: int | None = None


def make_handler(state: FakeEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietJSONHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.headers.append(dict(self.headers))
            if self.path != "/v1/chat/completions":
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            if state.status != 200:
                return self._json(
                    state.status, {"error": {"message": "model overloaded", "type": "server_error"}}
                )
            if body.get("stream"):
                return self._stream(body)
            time.sleep(state.delay_s)
            payload = {
                "id": "cmpl-1",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(state.pieces)},
                        "finish_reason": state.finish_reason,
                    }
                ],
            }
            if state.usage is not None:
                payload["usage"] = state.usage
            self._json(200, payload)

        def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
            base = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": body["model"]}
            yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            for i, piece in enumerate(state.pieces):
                if state.error_after is not None and i == state.error_after:
                    yield {"error": {"message": "upstream crashed"}}
                    return
                time.sleep(state.delay_s)
                yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": state.finish_reason}]}
            include = (body.get("stream_options") or {}).get("include_usage")
            if include and state.usage is not None:
                yield {**base, "choices": [], "usage": state.usage}

        def _stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(b": keep-alive\n\n")
                for event in self._events(body):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its deadline
            self.close_connection = True

    return Handler


@pytest.fixture
def endpoint() -> Iterator[tuple[FakeEndpoint, OpenAICompatConfig]]:
    state = FakeEndpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    config = OpenAICompatConfig(
        base_url=f"http://{host}:{port}/v1", model="tiny-chat", api_key="sk-test", timeout_s=5
    )
    try:
        yield state, config
    finally:
        server.shutdown()
        server.server_close()


def test_it_completes_without_streaming_and_parses_usage(endpoint):
    state, config = endpoint
    with OpenAICompatClient(config) as client:
        completion = client.chat(MESSAGES, max_tokens=16)
    assert completion.text == "Hello there"
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens) == (21, 3, 16)
    sent = state.requests[0]
    assert sent["max_tokens"] == 16 and sent["stream"] is False and sent["model"] == "tiny-chat"
    assert "stream_options" not in sent
    assert state.headers[0]["Authorization"] == "Bearer sk-test"


def test_it_streams_and_asks_for_usage(endpoint):
    state, config = endpoint
    pieces: list[str] = []
    with OpenAICompatClient(config) as client:
        completion = client.chat_stream(MESSAGES, max_tokens=8, on_text=pieces.append, stop=["\n"])
    assert pieces == ["Hel", "lo", " there"]
    assert completion.text == "Hello there"
    assert (completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens) == (21, 3, 16)
    sent = state.requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 8 and sent["stop"] == ["\n"]


def test_it_raises_endpoint_errors_with_status_and_message(endpoint):
    state, config = endpoint
    state.status = 503
    with OpenAICompatClient(config) as client:
        with pytest.raises(EndpointError) as err:
            client.chat(MESSAGES, max_tokens=4)
        assert err.value.status == 503 and err.value.message == "model overloaded" and err.value.retryable
        with pytest.raises(EndpointError) as err:
            client.chat_stream(MESSAGES, max_tokens=4)
        assert err.value.status == 503
    state.status = 401
    with pytest.raises(EndpointError) as err:
        generate(target=config, messages=MESSAGES, max_output_tokens=4, wall_time_limit_s=5)
    assert err.value.status == 401 and not err.value.retryable


def test_it_raises_a_transport_error_when_nothing_listens():
    config = OpenAICompatConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2)
    with pytest.raises(EndpointError) as err:
        generate(target=config, messages=MESSAGES, max_output_tokens=4, wall_time_limit_s=2)
    assert err.value.status is None and err.value.retryable


def test_it_meters_endpoint_calls_with_reported_usage(endpoint):
    state, config = endpoint
    state.finish_reason = "length"
    pieces: list[str] = []
    streamed = generate(
        target=config, messages=MESSAGES, max_output_tokens=3, wall_time_limit_s=5, on_token=pieces.append
    )
    plain = generate(target=config, messages=MESSAGES, max_output_tokens=3, wall_time_limit_s=5)
    for result in (streamed, plain):
        assert result.text == "Hello there"
        assert result.finish_reason == "length"
        assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (21, 3, 16)
        assert result.usage_estimated is False
        assert result.gpu_s == 0.0 and result.compute_s == 0.0
        assert result.model == "tiny-chat"
    assert "".join(pieces) == streamed.text


def test_it_estimates_usage_when_the_endpoint_reports_none(endpoint):
    state, config = endpoint
    state.usage = None
    result = generate(target=config, messages=MESSAGES, max_output_tokens=5, wall_time_limit_s=5)
    assert result.usage_estimated is True
    assert result.prompt_tokens == 3 + 4 + 3  # ceil(len("Say hello") / 4) + per-message + priming
    assert result.completion_tokens == 3  # ceil(len("Hello there") / 4)


def test_it_stops_reading_a_stream_at_the_wall_time_limit(endpoint):
    state, config = endpoint
    state.pieces = ["tick "] * 50
    state.delay_s = 0.05
    pieces: list[str] = []
    result = generate(
        target=config, messages=MESSAGES, max_output_tokens=50, wall_time_limit_s=0.3, on_token=pieces.append
    )
    assert result.finish_reason == "time_limit"
    assert 1 <= len(pieces) < 50
    assert result.text == "".join(pieces)
    assert result.usage_estimated is True and result.completion_tokens >= 1
    assert result.wall_s < 2.0


def test_it_bills_the_partial_stream_when_the_endpoint_fails_midway(endpoint):
    state, config = endpoint
    state.error_after = 2
    result = generate(
        target=config, messages=MESSAGES, max_output_tokens=8, wall_time_limit_s=5, on_token=lambda p: None
    )
    assert result.finish_reason == "error"
    assert result.text == "Hello"
    assert "upstream crashed" in result.error
    assert result.usage_estimated is True and result.completion_tokens == 2


def test_it_reads_the_api_key_from_a_named_env_var(monkeypatch):
    config = OpenAICompatConfig(base_url="http://127.0.0.1:9/v1", model="m")
    monkeypatch.setenv("PARSIMONY_TEST_KEY", "sk-env")
    assert config.with_key_from_env("PARSIMONY_TEST_KEY").api_key == "sk-env"
    assert "sk-env" not in repr(config.with_key_from_env("PARSIMONY_TEST_KEY"))
    monkeypatch.delenv("PARSIMONY_TEST_KEY")
    with pytest.raises(EndpointError, match="PARSIMONY_TEST_KEY"):
        config.with_key_from_env("PARSIMONY_TEST_KEY")
