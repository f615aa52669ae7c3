"""One answer stream for every run that streams text into its row (query runs, agent runs).

The engine calls the stream with each decoded piece; the stream keeps the whole text and writes
it to the row's ``answer`` column at most every ``flush_s`` seconds, so a page polling the row
sees the answer grow without a write per token. With a ``cancelled`` check it also stops the
generation when the run is cancelled (a Stop button, a client that closed its stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import models

STREAM_FLUSH_S = 0.15
# How often a stream with a ``cancelled`` check asks it (one indexed read): a cancel stops the generation
# within this much time plus one decode step.
CANCEL_CHECK_S = 0.2


class AnswerStream:
    """Collects streamed text and writes it to ``model``'s row ``pk``, throttled.

    ``strip_leading``: drop leading white space until the first visible piece, for runs whose
    final answer is stripped, so that what was streamed is always a prefix of the final answer.
    """

    def __init__(
        self, model: type[models.Model], pk: int, *, field: str = "answer", strip_leading: bool = False,
        flush_s: float = STREAM_FLUSH_S, cancelled: Callable[[], bool] | None = None,
        cancel_check_s: float = CANCEL_CHECK_S,
    ) -> None:
        self.model = model
        self.pk = pk
        self.field = field
        self.strip_leading = strip_leading
        self.flush_s = flush_s
        self.text = ""
        self._flushed_at = 0.0
        self.cancelled = cancelled
        self.cancel_check_s = cancel_check_s
        self._checked_at = time.monotonic()

    def __call__(self, piece: str) -> None:
        """Take one piece; raises ``GenerationCancelled`` (before keeping it) once ``cancelled()`` says so,
        which the decode loop turns into finish_reason "cancelled" with the tokens it used."""
        if self.cancelled is not None and time.monotonic() - self._checked_at >= self.cancel_check_s:
            self._checked_at = time.monotonic()
            if self.cancelled():
                from workers.runtime.decode import GenerationCancelled

                self.flush()
                raise GenerationCancelled("the run was cancelled")
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
