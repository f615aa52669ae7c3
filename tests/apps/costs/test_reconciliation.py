"""Reconciliation: a ledger written by the real billing path reconciles; every kind of tampering is found."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.agents.models import AgentRun
from apps.costs.metering import model_call
from apps.costs.models import BudgetWindow, Reservation, ReservationStatus, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import LedgerContext, budget_reserve, budget_save, reservation_release
from apps.costs.services.holds import hold_open
from apps.rag.models import QueryRun
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "user", "content": "one two"}]  # 2 prompt tokens: $2


def _spend(team, user, endpoint, *, calls: int = 3, **context):
    for _ in range(calls):
        model_call(endpoint=endpoint, messages=MESSAGES, context=LedgerContext(team=team, user=user, **context))


@pytest.fixture
def ledger(team_a, alice, echo_endpoint, echo):
    """A budget and a few metered calls ($18 each), one of them belonging to a query run."""
    echo.target = EchoTarget(reply="w " * 8)
    budget = budget_save(team=team_a, hard_limit=Decimal(1000), period="month")
    _spend(team_a, alice, echo_endpoint)
    run = QueryRun.objects.create(team=team_a, question="q", status="succeeded", cost=Decimal(18))
    _spend(team_a, alice, echo_endpoint, calls=1, query_run_id=run.pk)
    return budget


def _kinds(differences) -> list[tuple[str, str]]:
    return sorted((d.kind, d.model) for d in differences)


def test_a_ledger_written_by_the_billing_path_reconciles(ledger, capsys):
    assert UsageRecord.objects.count() == 4
    assert ledger_reconcile() == []
    call_command("reconcile_ledger")
    assert "0 differences" in capsys.readouterr().out


def test_it_finds_a_row_whose_cost_is_not_its_usage_at_its_prices(ledger, capsys):
    row = UsageRecord.objects.order_by("pk").first()
    UsageRecord.objects.filter(pk=row.pk).update(completion_tokens=9)  # 9 × $2 + 2 × $1 = $20, booked $18
    (difference,) = ledger_reconcile()
    assert (difference.kind, difference.pk) == ("row_cost", row.pk)
    assert (difference.expected, difference.recorded) == (Decimal(20), Decimal(18))
    with pytest.raises(SystemExit) as exited:
        call_command("reconcile_ledger")
    assert exited.value.code == 1
    out = capsys.readouterr()
    assert f"row_cost: UsageRecord #{row.pk}: expected 20.0000000000, recorded 18.0000000000" in out.out
    assert "1 differences" in out.err


def test_it_finds_window_and_reservation_totals_that_disagree_with_their_rows(ledger):
    window = BudgetWindow.objects.get(budget=ledger)
    assert window.spent == Decimal(72)
    BudgetWindow.objects.filter(pk=window.pk).update(spent=Decimal(70), reserved=Decimal(1))
    settled = Reservation.objects.filter(status=ReservationStatus.SETTLED).order_by("pk").first()
    Reservation.objects.filter(pk=settled.pk).update(actual=Decimal(17))
    differences = ledger_reconcile()
    assert _kinds(differences) == [
        ("reservation_actual", "Reservation"), ("window_reserved", "BudgetWindow"), ("window_spent", "BudgetWindow"),
    ]
    spent = next(d for d in differences if d.kind == "window_spent")
    assert (spent.expected, spent.recorded) == (Decimal(72), Decimal(70))


def test_it_finds_holds_past_their_expiry_and_rows_no_budget_booked(ledger, team_a, alice, echo_price):
    held = budget_reserve(team=team_a, user=alice, estimate=Decimal(5))
    assert ledger_reconcile() == []  # a live hold is fine, and counted in reserved
    Reservation.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(minutes=5))
    assert _kinds(ledger_reconcile()) == [("hold_expired", "Reservation")]
    # A worker that wrote a row and then lost its hold: spend that no window booked.
    hold = hold_open(path="query", context=LedgerContext(team=team_a, user=alice), estimate=Decimal(10))
    hold.record(stage="generate", model_name="test/echo", usage=_usage(), price=echo_price)
    reservation_release(reservation=hold.reservation)
    kinds = _kinds(ledger_reconcile())
    assert ("reservation_unbooked", "Reservation") in kinds


def test_it_finds_runs_whose_cost_is_not_the_sum_of_their_rows(ledger, team_a, alice, echo_endpoint):
    QueryRun.objects.update(cost=Decimal(20))
    agent_run = AgentRun.objects.create(team=team_a, request="r", status="succeeded", cost=Decimal(0))
    _spend(team_a, alice, echo_endpoint, calls=2, agent_run_id=agent_run.pk)
    differences = ledger_reconcile()
    assert _kinds(differences) == [("agent_run_cost", "AgentRun"), ("query_run_cost", "QueryRun")]
    agent = next(d for d in differences if d.kind == "agent_run_cost")
    assert (agent.expected, agent.recorded) == (Decimal(36), Decimal(0))
    # A run still running is not judged yet.
    AgentRun.objects.update(status="running")
    assert _kinds(ledger_reconcile()) == [("query_run_cost", "QueryRun")]


def test_since_limits_the_check_to_what_was_created_from_then_on(ledger, capsys):
    UsageRecord.objects.update(completion_tokens=9, created_at=timezone.now() - timedelta(days=3))
    assert {d.kind for d in ledger_reconcile()} >= {"row_cost"}
    assert not [d for d in ledger_reconcile(since=timezone.now() - timedelta(days=1)) if d.kind == "row_cost"]
    with pytest.raises(SystemExit):
        call_command("reconcile_ledger", "--since", (timezone.now() - timedelta(days=5)).date().isoformat())


def test_beat_reconciles_the_ledger_daily(ledger):
    from workers.celery import app
    from workers.tasks.costs import reconcile_ledger

    entries = [e for e in app.conf.beat_schedule.values() if e["task"] == "costs.reconcile_ledger"]
    assert entries and entries[0]["schedule"] == 24 * 3600.0
    assert reconcile_ledger() == 0
    UsageRecord.objects.update(cost=Decimal(1))
    # The four rows, the window, the four reservations and the query run they no longer add up to.
    assert reconcile_ledger() == 4 + 1 + 4 + 1


def _usage():
    from apps.costs.pricing import Usage

    return Usage(prompt_tokens=2, completion_tokens=1)
