"""Parse untrusted documents in a child process with a memory and a time limit.

A hostile file (a PDF whose streams inflate, deeply nested HTML, a parser bug that loops) must
cost its own document, never the worker or the web process that parses it. `parse_document_isolated`
hands the bytes to a long-lived child process (one per parent process, started on first use,
restarted after it dies) that runs `parsers.parse_document` under RLIMIT_AS; the parent waits at
most `timeout_s` for the answer and kills the child past it. Every failure is a DocumentParseError
whose message says which limit was hit, so the document ends `failed` with a reason and the
documents beside it go on.

Plain text (.txt, .md, bulk-import records) is decoded in the calling process: decoding is linear
in the input and has no parser to attack, and records come by the thousand.

The protocol on the child's stdin / stdout: a 4-byte big-endian length, a JSON header, then the
raw bytes the header announces (the document in, its text out).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from workers.ingest.parsers import (
    DEFAULT_MAX_INFLATE_RATIO,
    DEFAULT_MAX_INFLATED_BYTES,
    DocumentParseError,
    ParsedDocument,
    _extension,
    parse_document,
)

IN_PROCESS_EXTENSIONS = frozenset({".txt", ".md"})
# A child that parsed a document this large is replaced: its heap does not shrink back.
_RECYCLE_AFTER_BYTES = 5_000_000
_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class ParseLimits:
    memory_bytes: int = 2_000_000_000  # the child's address space (RLIMIT_AS)
    timeout_s: float = 120.0  # wall time per document
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    max_inflate_ratio: int = DEFAULT_MAX_INFLATE_RATIO


def _mb(size: float) -> str:
    return f"{size / 1_000_000:.0f} MB"


def _frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


class _ChildGone(Exception):
    pass


class IsolatedParser:
    """One child process that parses documents one after another under ``limits``."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()

    def _start(self) -> subprocess.Popen[bytes]:
        code = (
            f"import sys; sys.path.insert(0, {_ROOT!r}); "
            "from workers.ingest.isolation import child_main; child_main()"
        )
        limits = self.limits
        return subprocess.Popen(
            [sys.executable, "-B", "-c", code, str(limits.memory_bytes), str(limits.max_inflated_bytes),
             str(limits.max_inflate_ratio)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
        )

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None or self._pid != os.getpid():
            return  # a forked copy of the parent does not own the child
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> IsolatedParser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def parse(self, *, filename: str, data: bytes, media_type: str | None = None) -> ParsedDocument:
        """``parse_document`` in the child; DocumentParseError on any failure, limits included."""
        if self._process is None or self._process.poll() is not None:
            self.close()
            self._process = self._start()
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        request = {"filename": filename, "media_type": media_type, "size": len(data)}
        try:
            process.stdin.write(_frame(request))
            process.stdin.write(data)
            process.stdin.flush()
            header, payload = _read_reply(process.stdout, deadline=time.monotonic() + self.limits.timeout_s)
        except TimeoutError:
            self.close()
            raise DocumentParseError(
                f"parsing took longer than {self.limits.timeout_s:g} s, the limit: the document is refused"
            ) from None
        except (_ChildGone, BrokenPipeError, OSError):
            code = process.wait()
            self.close()
            raise DocumentParseError(
                f"the document could not be parsed: the parser stopped (exit status {code}); it may need more "
                f"than the {_mb(self.limits.memory_bytes)} memory limit, or be corrupt"
            ) from None
        if len(data) > _RECYCLE_AFTER_BYTES or header.get("recycle"):
            self.close()
        if not header.get("ok"):
            raise DocumentParseError(str(header.get("error") or "the document could not be parsed"))
        return ParsedDocument(text=payload.decode("utf-8"), title=header["title"], media_type=header["media_type"])


def _read_reply(stream: IO[bytes], *, deadline: float) -> tuple[dict[str, Any], bytes]:
    fd = stream.fileno()
    buffer = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)

        def take(n: int) -> bytes:
            while len(buffer) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(timeout=left):
                    raise TimeoutError
                chunk = os.read(fd, max(n - len(buffer), 1 << 16))
                if not chunk:
                    raise _ChildGone
                buffer.extend(chunk)
            out = bytes(buffer[:n])
            del buffer[:n]
            return out

        (head_size,) = struct.unpack(">I", take(4))
        header = json.loads(take(head_size))
        payload = take(int(header.get("size", 0)))
    return header, payload


# --------------------------------------------------------------------------- the shared parser

_shared_lock = threading.Lock()
_shared: IsolatedParser | None = None


def parse_document_isolated(
    *, filename: str, data: bytes, media_type: str | None = None, limits: ParseLimits | None = None
) -> ParsedDocument:
    """``parse_document`` under ``limits``: plain text here, everything else in this process's
    parser child (one at a time; started on first use, replaced after a fork, a crash or an overrun)."""
    global _shared
    limits = limits or ParseLimits()
    if _extension(filename, media_type) in IN_PROCESS_EXTENSIONS:
        return parse_document(
            filename=filename, data=data, media_type=media_type,
            max_inflated_bytes=limits.max_inflated_bytes, max_inflate_ratio=limits.max_inflate_ratio,
        )
    with _shared_lock:
        if _shared is None or _shared.limits != limits or _shared._pid != os.getpid():
            if _shared is not None:
                _shared.close()
            _shared = IsolatedParser(limits)
        return _shared.parse(filename=filename, data=data, media_type=media_type)


# --------------------------------------------------------------------------- the child


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def child_main() -> None:
    """The child: limit itself, then parse each document it is sent until its stdin closes."""
    memory_bytes, max_inflated_bytes, max_inflate_ratio = (int(arg) for arg in sys.argv[1:4])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Our replies own stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    source = sys.stdin.buffer
    out_of_memory = _frame({
        "ok": False, "recycle": True,
        "error": f"parsing it needed more than the {_mb(memory_bytes)} memory limit: the document is refused",
    })
    while True:
        size_bytes = _read_exact(source, 4)
        if size_bytes is None:
            return
        request = json.loads(_read_exact(source, struct.unpack(">I", size_bytes)[0]) or b"{}")
        data = _read_exact(source, int(request["size"])) or b""
        recycle = False
        try:
            parsed = parse_document(
                filename=request["filename"], data=data, media_type=request.get("media_type"),
                max_inflated_bytes=max_inflated_bytes, max_inflate_ratio=max_inflate_ratio,
            )
            text = parsed.text.encode("utf-8")
            header = {"ok": True, "title": parsed.title, "media_type": parsed.media_type, "size": len(text)}
            reply = _frame(header, text)
        except DocumentParseError as exc:
            reply = _frame({"ok": False, "error": exc.message})
        except MemoryError:
            # Built before: the failed parse's objects are only freed once this block is left.
            recycle, reply = True, out_of_memory
        except RecursionError:
            reply = _frame({"ok": False, "error": "the document is nested too deeply to parse"})
        except Exception as exc:  # noqa: BLE001 - any parser bug is this document's failure, not the worker's
            reply = _frame({"ok": False, "error": f"the document could not be parsed ({type(exc).__name__}: {exc})"})
        out.write(reply)
        out.flush()
        if recycle:
            return  # a fresh child for the next document: this heap may be fragmented near its limit
