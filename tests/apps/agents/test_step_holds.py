"""An agent step's hold grows with its work: the model call's bound, then each search and slice of tool time."""

import time
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from apps.agents import services
from apps.agents.services.runs import agent_first_step_bound
from apps.costs.models import BudgetWindow, Reservation, ReservationStatus, Stage, UsageRecord
from apps.costs.pricing import MONEY_QUANTUM
from apps.costs.services import budget_save, price_set
from tests.apps.agents.conftest import area_script

pytestmark = pytest.mark.django_db(transaction=True)

A_DOLLAR = Decimal(1)


def _price_per_cpu_second(model_name: str, dollars: Decimal) -> None:
    """A later price row: ``dollars`` per CPU-second from now on (so a slice or a search costs dollars)."""
    price_set(model_name=model_name, input_per_mtok=Decimal(0), output_per_mtok=Decimal(0),
              per_cpu_second=dollars, effective_from=timezone.now() - timedelta(seconds=1))


def _slow_tool(monkeypatch, seconds: float) -> None:
    def slow(arguments):
        time.sleep(seconds)
        return arguments["length"] * arguments["width"]

    monkeypatch.setattr("apps.agents.services.runs.tool_callable", lambda tool: slow)


def _run(team, agent, user=None):
    run = services.agent_run_start(team=team, agent=agent, request="What is the area of a rectangle 8 m by 5 m?",
                                   user=user)
    run.refresh_from_db()
    return run


def _step_holds(run) -> list[Reservation]:
    ids = UsageRecord.objects.filter(agent_run_id=run.pk).values("reservation_id")
    return list(Reservation.objects.filter(pk__in=ids).order_by("pk"))


def _rows_cost(hold: Reservation) -> Decimal:
    return UsageRecord.objects.filter(reservation=hold).aggregate(total=Sum("cost"))["total"]


def test_fast_tools_and_searches_fit_in_what_the_model_calls_bound_left(
    team_a, alice, builtin_tools, script, make_agent, monkeypatch
):
    from apps.costs.services import holds

    grown = []
    real = holds.reservation_extend
    monkeypatch.setattr(holds, "reservation_extend", lambda **kw: grown.append(kw["amount"]) or real(**kw))
    script.say(*area_script())
    run = _run(team_a, make_agent(team_a), user=alice)
    assert (run.status, run.finish_reason, run.tools_called) == ("succeeded", "stop", ["area_rectangle"])
    # Each hold was opened with its model call's bound only, and nothing the step did needed more.
    assert grown == []
    steps = _step_holds(run)
    assert len(steps) == 3 and all(h.status == ReservationStatus.SETTLED for h in steps)
    first = agent_first_step_bound(agent=run.agent, request=run.request)
    assert steps[0].pk == run.reservation_id and steps[0].estimate == first


def test_a_search_grows_the_hold_by_its_bound_from_the_querys_exact_tokens(
    team_a, alice, builtin_tools, script, make_agent
):
    from apps.corpora.services.embedding import embedding_bound
    from apps.costs.tokens import embedding_tokens

    _price_per_cpu_second("local/all-minilm-l6-v2", A_DOLLAR)  # a search's bound: cents, above what step 1 left
    script.say(*area_script())
    run = _run(team_a, make_agent(team_a), user=alice)
    assert run.status == "succeeded" and run.finish_reason == "stop", run.error
    first = Reservation.objects.get(pk=run.reservation_id)
    decompose = UsageRecord.objects.get(reservation=first, stage=Stage.AGENT_STEP)
    search = UsageRecord.objects.get(reservation=first, stage=Stage.RETRIEVE)
    query = run.steps[1]["searches"][0]["query"]
    assert search.prompt_tokens == embedding_tokens("all-MiniLM-L6-v2", [query])
    bound = embedding_bound(model_name="all-MiniLM-L6-v2", tokens=search.prompt_tokens)
    assert bound > agent_first_step_bound(agent=run.agent, request=run.request)
    # The hold covers exactly what was spent before the search plus the search's bound.
    assert first.estimate == (decompose.cost + bound).quantize(MONEY_QUANTUM, rounding=ROUND_CEILING)
    assert first.actual == decompose.cost + search.cost <= first.estimate


def test_a_tool_longer_than_a_slice_keeps_running_and_its_hold_grows(
    team_a, alice, builtin_tools, script, make_agent, monkeypatch
):
    _price_per_cpu_second("local/agent-tools", A_DOLLAR)  # a second of tool time: $1
    _slow_tool(monkeypatch, 0.8)
    script.say(*area_script())
    run = _run(team_a, make_agent(team_a), user=alice)
    assert (run.status, run.finish_reason, run.answer) == ("succeeded", "stop", "The area is 40 square meters.")
    tool = UsageRecord.objects.get(agent_run_id=run.pk, stage=Stage.TOOL)
    assert tool.finish_reason == "ok" and tool.cpu_seconds >= Decimal("0.8")
    hold = Reservation.objects.get(pk=tool.reservation_id)
    step = UsageRecord.objects.get(reservation=hold, stage=Stage.AGENT_STEP)
    # The step's model call held well under a cent; its hold grew slice by slice to cover the tool.
    assert step.cost < Decimal("0.01") and hold.estimate > A_DOLLAR * tool.cpu_seconds
    assert hold.actual == _rows_cost(hold) == step.cost + tool.cost
    assert hold.estimate - hold.actual <= Decimal("0.3")  # at most one quarter-second slice unused


def test_a_budget_that_cannot_pay_the_next_slice_stops_the_tool_and_bills_at_most_the_hold(
    team_a, alice, builtin_tools, script, make_agent, monkeypatch
):
    _price_per_cpu_second("local/agent-tools", A_DOLLAR)
    _slow_tool(monkeypatch, 3)
    limit = Decimal("0.6")  # the model calls cost a fraction of a cent: pays two slices of the tool, not three
    budget = budget_save(team=team_a, hard_limit=limit, period="month")
    script.say(*area_script())
    started = time.perf_counter()
    run = _run(team_a, make_agent(team_a, tool_timeout_s=10), user=alice)
    assert time.perf_counter() - started < 3  # not left running to its end
    assert (run.status, run.finish_reason, run.model_calls) == ("succeeded", "budget", 2)
    assert run.answer.startswith(
        "Stopped: the budget does not cover more time for the tool area_rectangle (after 2 model calls)."
    )
    call = run.steps[1]["calls"][0]["tool_calls"][0]
    assert call["result"] is None
    assert call["error"] == "stopped by the budget: it does not cover more than 0.50 s of this tool"
    tool = UsageRecord.objects.get(agent_run_id=run.pk, stage=Stage.TOOL)
    assert tool.finish_reason == "budget" and tool.cpu_seconds <= Decimal("0.5")
    hold = Reservation.objects.get(pk=tool.reservation_id)
    assert hold.status == ReservationStatus.SETTLED and hold.actual == _rows_cost(hold) <= hold.estimate
    window = BudgetWindow.objects.get(budget=budget)
    assert window.spent == run.cost == UsageRecord.objects.filter(agent_run_id=run.pk).aggregate(
        total=Sum("cost"))["total"]
    assert run.cost <= limit and window.reserved == 0
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
