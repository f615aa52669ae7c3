"""The metering hot path: statements per call, the price cache's proof, windows created on demand, refusals
that change nothing, and two windows per call under concurrency (no deadlocks, no overspend)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.costs import metering
from apps.costs.metering import model_call
from apps.costs.models import BudgetWindow, Price, Reservation, ReservationStatus, UsageRecord
from apps.costs.selectors import budget_status
from apps.costs.services import (
    BudgetExceeded,
    LedgerContext,
    budget_reserve,
    budget_save,
    period_start,
    price_set,
    reservation_settle,
)
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the one-statement path is PostgreSQL's (SQLite keeps the ORM)"
)
MESSAGES = [{"role": "user", "content": "x y z"}]  # 3 prompt tokens


@on_postgresql
def test_a_metered_call_is_one_statement_to_reserve_and_one_to_bill_and_settle(
    echo_endpoint, echo, ctx, team_a, alice
):
    budget_save(team=team_a, hard_limit=Decimal(1000), period="month")
    budget_save(team=team_a, scope="user", user=alice, hard_limit=Decimal(1000), period="day")
    echo.target = EchoTarget(reply="a b")
    model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx)  # caches the price, creates the windows
    with CaptureQueriesContext(connection) as queries:
        call = model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx)
    assert len(queries.captured_queries) == 2, [q["sql"][:80] for q in queries.captured_queries]
    assert call.cost == Decimal(3 * 1 + 2 * 2)
    # Under a reservation the caller holds: the ledger row alone, one statement.
    held = budget_reserve(team=team_a, user=alice, estimate=Decimal(100))
    with CaptureQueriesContext(connection) as queries:
        model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx, reservation=held)
    assert len(queries.captured_queries) == 1
    held.refresh_from_db()
    assert held.status == ReservationStatus.HELD


@pytest.mark.parametrize("under_caller_reservation", [False, True])
def test_a_price_edited_in_place_after_it_was_cached_is_not_charged(
    echo_endpoint, echo, ctx, team_a, echo_price, under_caller_reservation
):
    budget = budget_save(team=team_a, hard_limit=Decimal(1000), period="total")
    echo.target = EchoTarget(reply="a b")
    held = budget_reserve(team=team_a, estimate=Decimal(500)) if under_caller_reservation else None
    assert model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx, reservation=held).cost == 7
    # Same row, new values (an uncharged price edited in the admin, or update_or_create).
    Price.objects.filter(pk=echo_price.pk).update(input_per_mtok=Decimal(3_000_000))
    record = model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx, reservation=held).record
    assert record.cost == Decimal(3 * 3 + 2 * 2)
    assert record.price_input_per_mtok == Decimal(3_000_000)
    record.refresh_from_db()
    assert record.cost == 13 and record.price_input_per_mtok == Decimal(3_000_000)
    if not under_caller_reservation:
        # The reservation was estimated at the price in force too: 3 × 3 + 8 × 2 (the cap).
        assert Reservation.objects.order_by("-pk").first().estimate == Decimal(25)
        assert budget_status(budget=budget).spent == Decimal(7 + 13)


@pytest.mark.parametrize("under_caller_reservation", [False, True])
def test_a_back_dated_price_added_after_it_was_cached_applies_to_the_next_call(
    echo_endpoint, echo, ctx, team_a, under_caller_reservation
):
    budget_save(team=team_a, hard_limit=Decimal(1000), period="total")
    echo.target = EchoTarget(reply="a b")
    held = budget_reserve(team=team_a, estimate=Decimal(500)) if under_caller_reservation else None
    assert model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx, reservation=held).cost == 7
    # A new row whose effective_from is already past (earlier than now, later than the cached row's).
    new_price, _ = price_set(
        model_name="test/echo",
        input_per_mtok=Decimal(10_000_000),
        output_per_mtok=Decimal(20_000_000),
        effective_from=timezone.now() - timedelta(hours=1),
    )
    record = model_call(endpoint=echo_endpoint, messages=MESSAGES, context=ctx, reservation=held).record
    assert (record.price_id, record.cost) == (new_price.pk, Decimal(3 * 10 + 2 * 20))
    assert UsageRecord.objects.get(pk=record.pk).cost == 70


def test_it_creates_a_missing_window_and_a_budget_added_later_gets_its_own(team_a, alice):
    team_budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    assert not BudgetWindow.objects.exists()
    first = budget_reserve(team=team_a, user=alice, estimate=Decimal(2))
    assert BudgetWindow.objects.get(budget=team_budget).reserved == 2
    user_budget = budget_save(team=team_a, scope="user", user=alice, hard_limit=Decimal(3), period="week")
    second = budget_reserve(team=team_a, user=alice, estimate=Decimal(3))
    assert set(second.windows.values_list("budget_id", flat=True)) == {team_budget.pk, user_budget.pk}
    assert set(first.windows.values_list("budget_id", flat=True)) == {team_budget.pk}
    assert budget_status(budget=team_budget).reserved == 5
    assert budget_status(budget=user_budget).reserved == 3
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=alice, estimate=Decimal("0.5"))
    assert caught.value.detail["budget_id"] == user_budget.pk


def test_a_spent_window_of_a_past_period_does_not_block_the_new_one(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    yesterday = period_start("day", timezone.now() - timedelta(days=1))
    BudgetWindow.objects.create(budget=budget, period_start=yesterday, spent=Decimal(10))
    held = budget_reserve(team=team_a, estimate=Decimal(10))
    assert held.windows.get().period_start == period_start("day", timezone.now())
    assert BudgetWindow.objects.get(budget=budget, period_start=yesterday).reserved == 0


def test_a_refusal_by_one_window_holds_nothing_on_the_others(team_a, alice):
    team_budget = budget_save(team=team_a, hard_limit=Decimal(100), period="month")
    user_budget = budget_save(team=team_a, scope="user", user=alice, hard_limit=Decimal(5), period="day")
    budget_reserve(team=team_a, user=alice, estimate=Decimal(4))
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=alice, estimate=Decimal(2))
    detail = caught.value.detail
    assert detail["budget_id"] == user_budget.pk
    numbers = [Decimal(detail[key]) for key in ("limit", "spent", "reserved", "estimate", "over_by")]
    assert numbers == [5, 0, 4, 2, 1]
    assert budget_status(budget=team_budget).reserved == 4  # not 6
    assert budget_status(budget=user_budget).reserved == 4
    assert Reservation.objects.count() == 1
    assert Reservation.windows.through.objects.count() == 2


def test_settling_returns_the_reservation_and_twice_books_once(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    held = budget_reserve(team=team_a, estimate=Decimal(4))
    settled = reservation_settle(reservation=held, actual=Decimal(3))
    assert (settled.status, settled.actual) == (ReservationStatus.SETTLED, Decimal(3))
    again = reservation_settle(reservation=Reservation.objects.get(pk=held.pk), actual=Decimal(3))
    assert again.status == ReservationStatus.SETTLED
    status = budget_status(budget=budget)
    assert (status.spent, status.reserved) == (Decimal(3), Decimal(0))
    assert Reservation.objects.get(pk=held.pk).actual == 3


@pytest.mark.django_db(transaction=True)
def test_two_windows_per_call_under_concurrency_never_overspend_or_deadlock(
    team_a, alice, echo_endpoint, monkeypatch
):
    # A team budget with room to spare and a user budget that fits exactly 40 calls: every call
    # locks two windows (in id order), settles both, and the expiry sweep runs alongside.
    from apps.costs.services import reservations_expire

    target = EchoTarget(reply=" ".join(["w"] * echo_endpoint.max_output_tokens))
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: target)
    messages = [{"role": "user", "content": "one two"}]
    per_call = Decimal(2 * 1 + echo_endpoint.max_output_tokens * 2)
    team_budget = budget_save(team=team_a, hard_limit=per_call * 1000, period="month")
    user_budget = budget_save(team=team_a, scope="user", user=alice, hard_limit=per_call * 40, period="day")
    context = LedgerContext(team=team_a, user=alice)

    def one(i: int) -> str:
        try:
            if i % 25 == 0:
                reservations_expire()
            model_call(endpoint=echo_endpoint, messages=messages, context=context)
            return "ok"
        except BudgetExceeded as exc:
            return "refused" if exc.detail["budget_id"] == user_budget.pk else f"wrong budget {exc.detail}"
        except Exception as exc:  # noqa: BLE001 - a deadlock or any other error fails the test below
            return f"error: {type(exc).__name__}: {exc}"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=24) as pool:
        outcomes = list(pool.map(one, range(160)))

    assert [o for o in outcomes if o not in {"ok", "refused"}] == []
    assert outcomes.count("ok") == 40
    for budget in (team_budget, user_budget):
        status = budget_status(budget=budget)
        assert (status.spent, status.reserved) == (per_call * 40, 0)
    assert UsageRecord.objects.count() == 40
    assert Reservation.objects.filter(status=ReservationStatus.SETTLED).count() == 40
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
