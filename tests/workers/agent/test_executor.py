"""Tool calls held in slices: a tool runs only as long as its hold pays, growing it while it runs."""

import math
import time

from tests.workers.agent.conftest import CannedSearch, ScriptedModel, run_builtin
from workers.agent.executor import SLICE_MIN_S, ToolTime, call_with_timeout
from workers.agent.loop import AgentConfig, run_agent

RECTANGLE = {"rectangle": [("area_rectangle", 0.72)]}


class Hold:
    """A fake hold: pays for ``paid`` seconds now, grants extensions up to ``limit`` seconds."""

    def __init__(self, paid: float = 0.0, limit: float = math.inf) -> None:
        self.paid = paid
        self.limit = limit
        self.asked: list[float] = []

    def extend(self, seconds: float) -> bool:
        self.asked.append(seconds)
        if seconds > self.limit:
            return False
        self.paid = max(self.paid, seconds)
        return True

    @property
    def time(self) -> ToolTime:
        return ToolTime(paid_s=lambda: self.paid, extend=self.extend)


def _sleep(seconds: float, result: object = "done"):
    def run():
        time.sleep(seconds)
        return result

    return run


def test_a_tool_longer_than_a_slice_keeps_running_while_its_hold_grows():
    hold = Hold()
    outcome = call_with_timeout(_sleep(0.8), timeout_s=5, time_paid=hold.time)
    assert outcome.ok and outcome.result == "done"
    assert hold.asked[0] == SLICE_MIN_S  # nothing paid yet: one slice before it starts
    assert len(hold.asked) >= 3 and hold.asked == sorted(hold.asked)
    assert outcome.paid_s == hold.asked[-1] >= outcome.duration_ms / 1000 >= 0.8
    assert outcome.paid_s - 0.8 <= SLICE_MIN_S + 0.1  # at most about one slice more than it ran


def test_a_fast_tool_runs_in_what_the_hold_already_pays_for():
    hold = Hold(paid=2.0)
    outcome = call_with_timeout(lambda: 40, timeout_s=5, time_paid=hold.time)
    assert outcome.result == 40 and hold.asked == [] and outcome.paid_s == 2.0


def test_a_refused_slice_stops_the_tool_with_the_budget_error():
    hold = Hold(limit=0.5)
    started = time.perf_counter()
    outcome = call_with_timeout(_sleep(3), timeout_s=10, time_paid=hold.time)
    assert time.perf_counter() - started < 1.5
    assert outcome.budget_stopped and not outcome.timed_out and not outcome.ok
    assert outcome.paid_s == 0.5
    assert outcome.error == "stopped by the budget: it does not cover more than 0.50 s of this tool"
    assert hold.asked[-1] > 0.5  # the extension past the limit was asked for and refused


def test_a_tool_nothing_pays_for_is_not_started():
    ran = []
    outcome = call_with_timeout(lambda: ran.append(1), timeout_s=5, time_paid=Hold(limit=0.0).time)
    assert outcome.budget_stopped and outcome.paid_s == 0.0 and ran == []


def test_the_timeout_still_ends_a_tool_the_budget_would_pay_for():
    hold = Hold()
    outcome = call_with_timeout(_sleep(3), timeout_s=0.6, time_paid=hold.time)
    assert outcome.timed_out and outcome.error == "timed out after 0.6 s"
    assert max(hold.asked) == 0.6 == outcome.paid_s  # never held past the timeout


def test_an_unmetered_tool_asks_nothing():
    outcome = call_with_timeout(_sleep(0.3), timeout_s=5)
    assert outcome.result == "done" and outcome.paid_s is None


def test_a_tool_stopped_by_the_budget_ends_the_run_with_finish_reason_budget():
    done = []
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
    )
    result = run_agent(
        request="What is the area of a rectangle 8 by 5?",
        config=AgentConfig(tool_timeout_s=10),
        model=model,
        search=CannedSearch(RECTANGLE),
        execute=lambda tool, arguments: (time.sleep(2), run_builtin(tool, arguments))[1],
        on_tool_done=lambda tool, arguments, outcome: done.append(outcome),
        tool_time=Hold(limit=0.25).time,
    )
    assert result.finish_reason == "budget"
    assert result.answer.startswith(
        "Stopped: the budget does not cover more time for the tool area_rectangle (after 2 model calls)."
    )
    call = result.steps[1]["calls"][0]["tool_calls"][0]
    assert call["result"] is None and call["error"].startswith("stopped by the budget")
    assert [o.budget_stopped for o in done] == [True] and len(model.calls) == 2  # the model was not asked again
