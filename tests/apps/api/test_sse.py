"""The one SSE helper of /v1 and agents: the wire format and the poll of a growing row."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apps.api import sse


@dataclass
class Row:
    answer: str
    is_finished: bool


def test_it_writes_a_json_event_and_a_bare_done():
    assert sse.sse_event({"a": 1}) == b'data: {"a": 1}\n\n'
    assert sse.sse_event("[DONE]") == b"data: [DONE]\n\n"


def test_it_yields_the_row_until_it_finishes(monkeypatch):
    monkeypatch.setattr(sse, "STREAM_POLL_S", 0)
    rows = iter([Row("Pa", False), Row("Paris", False), Row("Paris.", True), Row("never read", True)])
    seen = [row.answer for row in sse.rows_until_finished(lambda: next(rows), timeout_s=60)]
    assert seen == ["Pa", "Paris", "Paris."]


def test_it_gives_up_on_a_row_that_never_finishes(monkeypatch):
    monkeypatch.setattr(sse, "STREAM_POLL_S", 0)
    polled = sse.rows_until_finished(lambda: Row("", False), timeout_s=0)
    assert next(polled).answer == ""
    with pytest.raises(sse.RowWaitTimedOut):
        next(polled)


def test_the_response_is_an_unbuffered_event_stream(db):
    response = sse.sse_response(iter([{"x": 1}, "[DONE]"]), headers={"X-Parsimony-Query-Run": "7"})
    assert response["Content-Type"] == "text/event-stream"
    assert (response["Cache-Control"], response["X-Accel-Buffering"]) == ("no-cache", "no")
    assert response["X-Parsimony-Query-Run"] == "7"
    assert b"".join(response.streaming_content) == b'data: {"x": 1}\n\ndata: [DONE]\n\n'
