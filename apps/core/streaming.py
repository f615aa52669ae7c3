"""One answer stream for every run that streams text into its row (query runs, agent runs).

The engine calls the stream with each decoded piece; the stream keeps the whole text and writes
it to the row's ``answer`` column at most every ``flush_s`` seconds, so a page polling the row
sees the answer grow without a write per token.
"""

from __future__ import annotations

import time

from django.db import models

STREAM_FLUSH_S = 0.15


class AnswerStream:
    """Collects streamed text and writes it to ``model``'s row ``pk``, throttled.

    ``strip_leading``: drop leading white space until the first visible piece, for runs whose
    final answer is stripped, so that what was streamed is always a prefix of the final answer.
    """

    def __init__(
        self, model: type[models.Model], pk: int, *, field: str = "answer", strip_leading: bool = False,
        flush_s: float = STREAM_FLUSH_S,
    ) -> None:
        self.model = model
        self.pk = pk
        self.field = field
        self.strip_leading = strip_leading
        self.flush_s = flush_s
        self.text = ""
        self._flushed_at = 0.0

    def __call__(self, piece: str) -> None:
        if self.strip_leading and not self.text:
            piece = piece.lstrip()
            if not piece:
                return
        self.text += piece
        now = time.monotonic()
        if now - self._flushed_at >= self.flush_s:
            self.flush()
            self._flushed_at = now

    def flush(self) -> None:
        self.model.objects.filter(pk=self.pk).update(**{self.field: self.text})
