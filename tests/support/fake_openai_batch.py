"""A fake OpenAI Batch API on loopback, for tests: a real HTTP server in a thread.

    with FakeBatchServer(reply="Paris [1]", prompt_tokens=120, completion_tokens=7, fail={"3"}) as server:
        endpoint = ModelEndpoint(kind="openai", base_url=server.base_url, batch_api=True, ...)

Routes: ``POST /v1/files`` (multipart, purpose "batch"), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches`` (list), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. A batch is
"in_progress" for its first ``polls_until_done`` retrievals, then "completed": every request line answers
``reply`` with usage ``prompt_tokens`` / ``completion_tokens`` (``cached_tokens`` among the prompt's),
except the custom ids in ``fail`` (or the request lines ``fail_when`` picks), which go to the error file
with ``fail_message``. A cancelled batch is "cancelling" until its next retrieval, then "cancelled" with the
answers to its first ``answered_before_cancel`` request lines (the provider keeps, and charges for, what it
finished before the cancel took effect). ``uploads`` and ``creates`` count the submissions, ``cancels`` the
cancels; ``unavailable``: the next that many batch retrievals answer 503.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.local_server import LocalHTTPServer, QuietJSONHandler


class FakeBatchServer(LocalHTTPServer):
    def __init__(self, *, reply: str = "Paris [1]", prompt_tokens: int = 120, completion_tokens: int = 7,
                 cached_tokens: int = 0, fail: set[str] | None = None,
                 fail_message: str = "This model's maximum context length was exceeded",
                 polls_until_done: int = 1, fail_when: Callable[[dict[str, Any]], bool] | None = None,
                 answered_before_cancel: int = 0) -> None:
        self.reply, self.prompt_tokens, self.completion_tokens = reply, prompt_tokens, completion_tokens
        self.cached_tokens = cached_tokens
        self.fail = set(fail or ())
        self.fail_when = fail_when  # or: a request line (custom_id, body) that should fail
        self.fail_message = fail_message
        self.polls_until_done = polls_until_done
        self.answered_before_cancel = answered_before_cancel
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.unavailable = 0  # the next this many batch retrievals answer 503
        self.uploads = self.creates = self.cancels = 0
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()

    def handler_class(self):
        return _handler(self)

    # ------------------------------------------------------------------ state

    def input_lines(self, batch_id: str) -> list[dict[str, Any]]:
        content = self.files[self.batches[batch_id]["input_file_id"]]["content"]
        return [json.loads(line) for line in content.decode().splitlines() if line.strip()]

    def _file(self, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = {"content": content, "meta": {
            "id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed"}}
        return self.files[file_id]["meta"]

    def _finish(self, batch: dict[str, Any], status: str = "completed", lines: int | None = None) -> None:
        out, err = [], []
        for line in self.input_lines(batch["id"])[:lines]:
            custom_id = line["custom_id"]
            if custom_id in self.fail or (self.fail_when is not None and self.fail_when(line)):
                err.append({"id": f"req-{custom_id}", "custom_id": custom_id, "response": {
                    "status_code": 400, "request_id": f"r-{custom_id}",
                    "body": {"error": {"message": self.fail_message, "type": "invalid_request_error"}}},
                    "error": None})
                continue
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                     "total_tokens": self.prompt_tokens + self.completion_tokens,
                     "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
            out.append({"id": f"req-{custom_id}", "custom_id": custom_id, "error": None, "response": {
                "status_code": 200, "request_id": f"r-{custom_id}", "body": {
                    "id": f"chatcmpl-{custom_id}", "object": "chat.completion", "created": int(time.time()),
                    "model": line["body"]["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply},
                                 "finish_reason": "stop"}],
                    "usage": usage}}})
        def jsonl(lines):
            return b"".join(json.dumps(x).encode() + b"\n" for x in lines)

        batch["output_file_id"] = self._file(jsonl(out), "batch_output", "output.jsonl")["id"] if out else None
        batch["error_file_id"] = self._file(jsonl(err), "batch_output", "errors.jsonl")["id"] if err else None
        batch["status"] = status
        batch[f"{status}_at"] = int(time.time())
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}

    def _advance(self, batch: dict[str, Any]) -> None:
        self.polls[batch["id"]] = self.polls.get(batch["id"], 0) + 1
        if batch["status"] == "cancelling":
            self._finish(batch, "cancelled", self.answered_before_cancel)
        elif batch["status"] == "in_progress" and self.polls[batch["id"]] >= self.polls_until_done:
            self._finish(batch)


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body (enough for the SDK's uploads)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not boundary:
        return {}
    fields = {}
    for part in body.split(b"--" + boundary.group(1).encode()):
        if b"\r\n\r\n" not in part:
            continue
        head, _, data = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = (filename.group(1).decode() if filename else "",
                                              data[:-2] if data.endswith(b"\r\n") else data)
    return fields


def _handler(server: FakeBatchServer) -> type[BaseHTTPRequestHandler]:  # noqa: C901 (one route table)
    class Handler(QuietJSONHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _missing(self) -> None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            server.authorizations.append(self.headers.get("Authorization"))
            path = self.path.split("?")[0].rstrip("/")
            with server._lock:
                if match := re.fullmatch(r"/v1/files/([^/]+)/content", path):
                    file = server.files.get(match.group(1))
                    if file is None:
                        return self._missing()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(file["content"])))
                    self.end_headers()
                    self.wfile.write(file["content"])
                    return None
                if path == "/v1/batches":
                    data = sorted(server.batches.values(), reverse=True,
                                  key=lambda b: (b["created_at"], int(b["id"].split("_")[1])))
                    return self._json(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                if match := re.fullmatch(r"/v1/batches/([^/]+)", path):
                    batch = server.batches.get(match.group(1))
                    if batch is None:
                        return self._missing()
                    if server.unavailable > 0:
                        server.unavailable -= 1
                        return self._json(503, {"error": {"message": "overloaded", "type": "server_error"}})
                    server._advance(batch)
                    return self._json(200, batch)
            return self._missing()

        def do_POST(self) -> None:
            server.authorizations.append(self.headers.get("Authorization"))
            path = self.path.split("?")[0].rstrip("/")
            body = self._body()
            with server._lock:
                if path == "/v1/files":
                    fields = _multipart(body, self.headers.get("Content-Type", ""))
                    filename, content = fields.get("file", ("", b""))
                    purpose = fields.get("purpose", ("", b""))[1].decode()
                    if purpose != "batch" or not content:
                        return self._json(400, {"error": {"message": "a batch file is needed"}})
                    server.uploads += 1
                    return self._json(200, server._file(content, purpose, filename))
                if path == "/v1/batches":
                    request = json.loads(body or b"{}")
                    if request.get("input_file_id") not in server.files:
                        return self._json(400, {"error": {"message": "no such input file"}})
                    if request.get("endpoint") != "/v1/chat/completions" or request.get("completion_window") != "24h":
                        return self._json(400, {"error": {"message": "unsupported endpoint or window"}})
                    server.creates += 1
                    batch_id = f"batch_{server.creates}"
                    server.batches[batch_id] = {
                        "id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                        "input_file_id": request["input_file_id"], "completion_window": "24h",
                        "status": "in_progress", "created_at": int(time.time()), "metadata": request.get("metadata"),
                        "output_file_id": None, "error_file_id": None, "errors": None,
                        "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    }
                    return self._json(200, server.batches[batch_id])
                if match := re.fullmatch(r"/v1/batches/([^/]+)/cancel", path):
                    batch = server.batches.get(match.group(1))
                    if batch is None:
                        return self._missing()
                    server.cancels += 1
                    if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                        batch["status"] = "cancelling"
                    return self._json(200, batch)
            return self._missing()

    return Handler


__all__ = ["FakeBatchServer"]
