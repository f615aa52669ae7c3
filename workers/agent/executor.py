"""Running one tool call with a timeout, on its own thread.

Python threads cannot be killed: a call that outlives its timeout is abandoned (it finishes
in the background, its result ignored) and reported as timed out. Built-in tools refuse
inputs that would run for long (see ``tools.math_tools``), and http tools carry their own
transport timeout, so abandoned threads end soon after.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_RESULT_CHARS = 4_000


@dataclass
class ToolOutcome:
    result: Any = None
    error: str | None = None
    duration_ms: int = 0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a tool result (tuples to lists, complex and others to strings)."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return str(value)


def result_text(value: Any, *, limit: int = MAX_RESULT_CHARS) -> str:
    """The result as the model reads it: JSON for structures, plain text for strings, capped."""
    text = value if isinstance(value, str) else json.dumps(_plain(value), ensure_ascii=False)
    if isinstance(value, float):
        text = repr(round(value, 10))
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def call_with_timeout(function: Callable[[], Any], *, timeout_s: float, name: str = "tool") -> ToolOutcome:
    """Run ``function()`` on a daemon thread; wait at most ``timeout_s``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = function()
        except BaseException as exc:  # noqa: BLE001 - any tool failure is reported to the model
            box["error"] = f"{type(exc).__name__}: {exc}"

    started = time.perf_counter()
    thread = threading.Thread(target=target, name=f"agent-tool-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    duration_ms = int((time.perf_counter() - started) * 1000)
    if thread.is_alive():
        return ToolOutcome(error=f"timed out after {timeout_s:g} s", duration_ms=duration_ms, timed_out=True)
    if "error" in box:
        return ToolOutcome(error=box["error"][:1000], duration_ms=duration_ms)
    return ToolOutcome(result=_plain(box.get("result")), duration_ms=duration_ms)
