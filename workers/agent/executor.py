"""Running one tool call with a timeout, on its own thread, for as long as its hold pays.

Python threads cannot be killed: a call that outlives its timeout (or what its budget pays
for) is abandoned (it finishes in the background, its result ignored) and reported as timed
out (or stopped by the budget). Built-in tools refuse inputs that would run for long (see
``tools.math_tools``), and http tools carry their own transport timeout, so abandoned threads
end soon after.

Tool time is held in slices (``ToolTime``, two plain callables from the caller): before the
call, the seconds the hold already pays for; while the tool runs past them, one more slice is
asked for at a time, until the tool finishes, the timeout passes, or the extension is refused
(the tool is then stopped, ``budget_stopped``). A slice is ``max(SLICE_MIN_S, SLICE_GROWTH ×
the seconds paid so far)``: a fast tool (the built-in ones take well under a millisecond, a
retrieval tool tens of milliseconds) finishes inside what the hold already has or its first
quarter second, so it adds at most 0.25 s of CPU to the hold; a slow one (an http call) holds at
most 25% more than it ran once past its first second, and asks about 14 times over a 10 s
call instead of 40.
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
SLICE_MIN_S = 0.25  # the smallest slice of tool time held at once
SLICE_GROWTH = 0.25  # later slices: this share of the seconds paid so far (geometric: few extensions)


@dataclass
class ToolOutcome:
    result: Any = None
    error: str | None = None
    duration_ms: int = 0
    timed_out: bool = False
    budget_stopped: bool = False  # stopped (or not started) because the budget refused more time
    paid_s: float | None = None  # the seconds its hold pays for (None: unmetered); bill at most these

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


@dataclass(frozen=True)
class ToolTime:
    """How a tool call's time is paid for (the caller's callables; nothing here knows about money).

    ``paid_s()``: the seconds the hold already pays for (``math.inf``: unmetered).
    ``extend(seconds)``: make the hold pay for ``seconds`` of this call in all; False when refused.
    """

    paid_s: Callable[[], float]
    extend: Callable[[float], bool]


def _slice(paid_s: float) -> float:
    return max(SLICE_MIN_S, SLICE_GROWTH * paid_s)


def budget_error(paid_s: float) -> str:
    return f"stopped by the budget: it does not cover more than {paid_s:.2f} s of this tool"


def call_with_timeout(
    function: Callable[[], Any], *, timeout_s: float, name: str = "tool", time_paid: ToolTime | None = None
) -> ToolOutcome:
    """Run ``function()`` on a daemon thread; wait at most ``timeout_s``, and only as long as
    ``time_paid`` pays for (slices asked for while it runs; see the module docstring)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = function()
        except BaseException as exc:  # noqa: BLE001 - any tool failure is reported to the model
            box["error"] = f"{type(exc).__name__}: {exc}"

    granted = math.inf if time_paid is None else max(0.0, time_paid.paid_s())
    if granted < min(SLICE_MIN_S, timeout_s):
        want = min(SLICE_MIN_S, timeout_s)
        if time_paid is not None and time_paid.extend(want):
            granted = want
        elif granted <= 0:  # not a moment of it is paid for: not started
            return ToolOutcome(error=budget_error(0.0), budget_stopped=True, paid_s=0.0)
    paid = None if math.isinf(granted) else granted
    started = time.perf_counter()
    thread = threading.Thread(target=target, name=f"agent-tool-{name}", daemon=True)
    thread.start()
    stopped = False
    while True:
        thread.join(max(0.0, min(granted, timeout_s) - (time.perf_counter() - started)))
        if not thread.is_alive() or granted >= timeout_s:
            break
        # Slices from what was paid, not the clock: a late wake-up asks again at once if need be.
        want = min(timeout_s, granted + _slice(granted))
        assert time_paid is not None  # an unmetered call is granted inf, which is >= timeout_s
        if not time_paid.extend(want):
            stopped = thread.is_alive()  # it may have finished while the hold was asked
            break
        granted = paid = want
    duration_ms = int((time.perf_counter() - started) * 1000)
    if stopped:
        return ToolOutcome(error=budget_error(granted), duration_ms=duration_ms, budget_stopped=True, paid_s=paid)
    if thread.is_alive():
        return ToolOutcome(
            error=f"timed out after {timeout_s:g} s", duration_ms=duration_ms, timed_out=True, paid_s=paid
        )
    if "error" in box:
        return ToolOutcome(error=box["error"][:1000], duration_ms=duration_ms, paid_s=paid)
    return ToolOutcome(result=_plain(box.get("result")), duration_ms=duration_ms, paid_s=paid)
