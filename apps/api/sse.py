"""Server-sent events for the streaming endpoints (/v1/chat/completions over pipelines and agents).

One place for the wire format (`data: <json>` and a blank line), the headers that keep proxies
from buffering, the database connection a long-lived generator must give back, and the poll
of a row whose answer grows while a worker writes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from django.db import close_old_connections
from django.http import StreamingHttpResponse

STREAM_POLL_S = 0.05


class FinishingRow(Protocol):
    @property
    def is_finished(self) -> bool: ...


RowT = TypeVar("RowT", bound=FinishingRow)


class RowWaitTimedOut(Exception):
    """The row was still unfinished when the stream's time ran out."""


# An SSE comment: clients ignore it; writing it every so often while nothing else is sent is how a server
# notices, on its next write, that the client went away.
KEEP_ALIVE = None
KEEP_ALIVE_S = 1.0


def sse_event(payload: dict | str | None) -> bytes:
    """One event: a JSON object, or a bare string such as OpenAI's closing `[DONE]`; None: a keep-alive comment."""
    if payload is KEEP_ALIVE:
        return b": keep-alive\n\n"
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def sse_response(
    events: Iterable[dict | str | None], *, headers: dict[str, str], on_disconnect: Callable[[], None] | None = None
) -> StreamingHttpResponse:
    """Stream `events` as server-sent events, with `headers` added to the no-buffering ones.

    `on_disconnect`: called when the client goes away before the last event (the server closes the
    stream when a write fails: gunicorn and Django's server both close the response then), e.g. to
    cancel the run whose answer was streaming."""

    def encoded() -> Iterator[bytes]:
        done = False
        try:
            for payload in events:
                yield sse_event(payload)
            done = True
        finally:
            try:
                if not done and on_disconnect is not None:
                    on_disconnect()
            finally:
                # The generator outlives the request cycle that would close its database connection.
                close_old_connections()

    response = StreamingHttpResponse(encoded(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in headers.items():
        response[name] = value
    return response


def rows_until_finished(load: Callable[[], RowT], *, timeout_s: float) -> Iterator[RowT]:
    """Yield `load()` every STREAM_POLL_S until a finished row (the last one yielded).

    Raises RowWaitTimedOut when the row is still unfinished after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        row = load()
        yield row
        if row.is_finished:
            return
        if time.monotonic() > deadline:
            raise RowWaitTimedOut
        time.sleep(STREAM_POLL_S)
