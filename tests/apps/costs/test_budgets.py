"""Budgets: reserve the worst case, settle, release, expire; 402s that explain themselves; periods; alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.services import membership_set
from apps.costs.metering import model_call
from apps.costs.models import BudgetWindow, Reservation, ReservationStatus, UsageRecord
from apps.costs.selectors import budget_status, team_budget_alerts
from apps.costs.services import (
    BudgetExceeded,
    LedgerContext,
    budget_reserve,
    budget_save,
    period_start,
    reservation_release,
    reservation_settle,
    reservations_expire,
)
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db


def test_it_reserves_settles_and_releases_against_the_window(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    first = budget_reserve(team=team_a, estimate=Decimal(4))
    second = budget_reserve(team=team_a, estimate=Decimal(3))
    assert budget_status(budget=budget).reserved == Decimal(7)
    reservation_settle(reservation=first, actual=Decimal("2.5"))
    reservation_release(reservation=second)
    status = budget_status(budget=budget)
    assert (status.spent, status.reserved) == (Decimal("2.5"), Decimal(0))
    # Settling twice books nothing twice.
    reservation_settle(reservation=first, actual=Decimal("2.5"))
    assert budget_status(budget=budget).spent == Decimal("2.5")


def test_it_refuses_with_402_naming_the_budget_limit_spent_reserved_estimate_and_overage(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="month")
    reservation_settle(reservation=budget_reserve(team=team_a, estimate=Decimal(5)), actual=Decimal(4))
    budget_reserve(team=team_a, estimate=Decimal(3))
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, estimate=Decimal(5))
    error = caught.value
    assert error.http_status == 402 and error.code == "budget_exceeded"
    assert "the month budget of team 'Team A'" in error.message
    for amount in ["limit $10.000000", "spent $4.000000", "reserved $3.000000", "$5.000000", "over by $2.000000"]:
        assert amount in error.message, amount
    assert error.detail["budget_id"] == budget.pk
    assert Decimal(error.detail["limit"]) == 10
    assert Decimal(error.detail["spent"]) == 4
    assert Decimal(error.detail["reserved"]) == 3
    assert Decimal(error.detail["estimate"]) == 5
    assert Decimal(error.detail["over_by"]) == 2
    assert (error.detail["scope"], error.detail["period"]) == ("team", "month")
    # Nothing was held for the refused request.
    assert budget_status(budget=budget).reserved == Decimal(3)
    assert Reservation.objects.count() == 2


def test_it_accepts_a_request_that_fits_exactly(team_a):
    budget_save(team=team_a, hard_limit=Decimal(10), period="total")
    budget_reserve(team=team_a, estimate=Decimal(10))
    with pytest.raises(BudgetExceeded):
        budget_reserve(team=team_a, estimate=Decimal("0.0000000001"))


def test_it_applies_user_and_api_key_budgets_alongside_the_team_budget(team_a, alice, make_user, make_api_key):
    carol = make_user("carol")
    membership_set(team=team_a, user=carol, role=Role.MEMBER)
    key = make_api_key(team_a).api_key
    team_budget = budget_save(team=team_a, hard_limit=Decimal(100), period="day")
    alice_budget = budget_save(team=team_a, scope="user", user=alice, hard_limit=Decimal(5), period="day")
    key_budget = budget_save(team=team_a, scope="api_key", api_key=key, hard_limit=Decimal(7), period="day")

    held = budget_reserve(team=team_a, user=alice, api_key=key, estimate=Decimal(4))
    assert set(held.windows.values_list("budget_id", flat=True)) == {team_budget.pk, alice_budget.pk, key_budget.pk}
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=alice, estimate=Decimal(2))
    assert caught.value.detail["budget_id"] == alice_budget.pk
    assert "user 'alice'" in caught.value.message
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=carol, api_key=key, estimate=Decimal(4))
    assert caught.value.detail["budget_id"] == key_budget.pk
    assert "API key 'test key'" in caught.value.message
    # Carol without the key only meets the team budget.
    budget_reserve(team=team_a, user=carol, estimate=Decimal(50))
    assert budget_status(budget=team_budget).reserved == Decimal(54)
    assert budget_status(budget=alice_budget).reserved == Decimal(4)
    assert budget_status(budget=key_budget).reserved == Decimal(4)


def test_it_ignores_other_teams_and_disabled_budgets(team_a, team_b):
    other_team = budget_save(team=team_b, hard_limit=Decimal(0), period="total")
    disabled = budget_save(team=team_a, hard_limit=Decimal(0), period="total", enabled=False)
    held = budget_reserve(team=team_a, estimate=Decimal(1000))  # a $0 limit on either would refuse it
    assert held.status == ReservationStatus.HELD and held.estimate == Decimal(1000)
    assert not held.windows.exists()  # held against no budget at all
    assert budget_status(budget=other_team).reserved == 0
    assert budget_status(budget=disabled).reserved == 0
    # Team B's own request still meets its $0 budget.
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_b, estimate=Decimal("0.01"))
    assert caught.value.detail["budget_id"] == other_team.pk


def test_it_releases_a_dead_workers_reservation_by_expiry(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="total")
    dead = budget_reserve(team=team_a, estimate=Decimal(9), ttl_s=60)
    live = budget_reserve(team=team_a, estimate=Decimal(1), ttl_s=3600)
    assert reservations_expire() == 0  # not yet
    with pytest.raises(BudgetExceeded):
        budget_reserve(team=team_a, estimate=Decimal(1))
    assert reservations_expire(now=timezone.now() + timedelta(minutes=5)) == 1
    dead.refresh_from_db()
    assert dead.status == ReservationStatus.EXPIRED
    assert budget_status(budget=budget).reserved == Decimal(1)
    assert reservations_expire(now=timezone.now() + timedelta(hours=2)) == 1
    assert budget_status(budget=budget).reserved == Decimal(0)
    # A worker that comes back late still books what it spent, without double-releasing.
    reservation_settle(reservation=live, actual=Decimal("0.5"))
    status = budget_status(budget=budget)
    assert (status.spent, status.reserved) == (Decimal("0.5"), Decimal(0))


def test_the_periodic_task_expires_reservations(team_a):
    from workers.tasks.costs import expire_reservations

    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="total")
    held = budget_reserve(team=team_a, estimate=Decimal(9))
    Reservation.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_reservations() == 1
    assert budget_status(budget=budget).reserved == 0


def test_beat_runs_the_expiry_every_minute():
    from workers.celery import app

    entries = [e for e in app.conf.beat_schedule.values() if e["task"] == "costs.expire_reservations"]
    assert entries and entries[0]["schedule"] == 60.0
    assert entries[0]["options"]["queue"] == "cpu"


@pytest.mark.parametrize(
    ("period", "at", "zone", "start"),
    [
        ("day", datetime(2026, 3, 10, 23, 30, tzinfo=UTC), "UTC", datetime(2026, 3, 10, tzinfo=UTC)),
        # 23:30 UTC is already the 11th in Berlin (UTC+1 in March before DST).
        ("day", datetime(2026, 3, 10, 23, 30, tzinfo=UTC), "Europe/Berlin", datetime(2026, 3, 10, 23, tzinfo=UTC)),
        # 2026-03-11 is a Wednesday: the week starts Monday the 9th, local midnight.
        ("week", datetime(2026, 3, 11, 12, tzinfo=UTC), "America/New_York", datetime(2026, 3, 9, 4, tzinfo=UTC)),
        ("week", datetime(2026, 3, 9, 0, 0, tzinfo=UTC), "UTC", datetime(2026, 3, 9, tzinfo=UTC)),
        # 02:00 UTC on 1 April is still 31 March in New York: March's window, EST at its start.
        ("month", datetime(2026, 4, 1, 2, tzinfo=UTC), "America/New_York", datetime(2026, 3, 1, 5, tzinfo=UTC)),
        ("month", datetime(2026, 4, 1, 2, tzinfo=UTC), "UTC", datetime(2026, 4, 1, tzinfo=UTC)),
        ("total", datetime(2026, 4, 1, 2, tzinfo=UTC), "Asia/Tokyo", None),
    ],
)
def test_it_starts_periods_at_local_boundaries(settings, period, at, zone, start):
    settings.PARSIMONY_BUDGET_TIMEZONE = zone
    got = period_start(period, at)
    if start is None:
        assert got == period_start("total", at + timedelta(days=400))
    else:
        assert got == start
        assert got.utcoffset() is not None


def test_a_new_period_starts_a_fresh_window(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    reservation_settle(reservation=budget_reserve(team=team_a, estimate=Decimal(10)), actual=Decimal(10))
    tomorrow = timezone.now() + timedelta(days=1)
    assert budget_status(budget=budget).spent == 10
    assert budget_status(budget=budget, at=tomorrow).spent == 0
    assert BudgetWindow.objects.filter(budget=budget).count() == 1


def test_it_sends_one_soft_limit_alert_per_period_to_owners_and_admins(
    team_a, alice, make_user, echo_endpoint, echo, django_capture_on_commit_callbacks
):
    alice.email = "alice@example.com"
    alice.save()
    admin_user = make_user("dora", email="dora@example.com")
    membership_set(team=team_a, user=admin_user, role=Role.ADMIN)
    membership_set(team=team_a, user=make_user("ned"), role=Role.ADMIN)  # no e-mail
    membership_set(team=team_a, user=make_user("mia", email="mia@example.com"), role=Role.MEMBER)
    budget = budget_save(team=team_a, hard_limit=Decimal(100), period="month", soft_limit_percent=50)
    context = LedgerContext(team=team_a, user=alice)
    echo.target = EchoTarget(reply="w " * 8)  # 8 output tokens: $16 + prompt
    messages = [{"role": "user", "content": "one two"}]  # $2: each call costs $18
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            model_call(endpoint=echo_endpoint, messages=messages, context=context)
    assert mail.outbox == []  # $36 < $50
    assert team_budget_alerts(team=team_a) == []
    for _ in range(3):  # $54, $72, $90: over the soft limit three times, one e-mail
        with django_capture_on_commit_callbacks(execute=True):
            model_call(endpoint=echo_endpoint, messages=messages, context=context)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["alice@example.com", "dora@example.com"]
    assert "50%" in message.subject and "Team A" in message.subject
    assert [status.budget for status in team_budget_alerts(team=team_a)] == [budget]


def test_the_expiry_task_is_registered_and_routed_to_cpu():
    from workers.celery import TASK_MODULES, app
    from workers.tasks.base import route_task

    assert "workers.tasks.costs" in TASK_MODULES
    import workers.tasks.costs  # noqa: F401
    assert "costs.expire_reservations" in app.tasks
    assert route_task("costs.expire_reservations", (), {}, {}) == {"queue": "cpu"}


def test_a_budget_created_mid_period_starts_from_the_ledgers_spend(team_a, alice, make_user, echo_endpoint, echo):
    # Spend first, with no budget: $18 by alice (2 prompt tokens at $1, 8 output at $2), $18 by carol.
    carol = make_user("carol")
    membership_set(team=team_a, user=carol, role=Role.MEMBER)
    echo.target = EchoTarget(reply="w " * 8)
    messages = [{"role": "user", "content": "one two"}]
    model_call(endpoint=echo_endpoint, messages=messages, context=LedgerContext(team=team_a, user=alice))
    model_call(endpoint=echo_endpoint, messages=messages, context=LedgerContext(team=team_a, user=carol))
    # Then a $40 month budget for the team and a $20 one for alice.
    team_budget = budget_save(team=team_a, hard_limit=Decimal(40), period="month")
    alice_budget = budget_save(team=team_a, scope="user", user=alice, hard_limit=Decimal(20), period="month")
    assert budget_status(budget=team_budget).spent == 36  # shown so before any request
    # The first request sees the prior spend: $36 of $40 spent, so a $5 hold is refused ...
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=carol, estimate=Decimal(5))
    assert caught.value.detail["budget_id"] == team_budget.pk
    assert Decimal(caught.value.detail["spent"]) == 36
    # ... and alice's own budget opened at her $18.
    with pytest.raises(BudgetExceeded) as caught:
        budget_reserve(team=team_a, user=alice, estimate=Decimal(3))
    assert caught.value.detail["budget_id"] == alice_budget.pk
    assert Decimal(caught.value.detail["spent"]) == 18
    # Spend after the window opened adds to it once (not counted again as opening spend).
    held = budget_reserve(team=team_a, user=carol, estimate=Decimal(4))
    reservation_settle(reservation=held, actual=Decimal(4))
    window = BudgetWindow.objects.get(budget=team_budget)
    assert (window.spent, window.opening_spent) == (Decimal(40), Decimal(36))


def test_a_new_budgets_opening_spend_counts_only_its_period(team_a, alice, echo_endpoint, echo):
    echo.target = EchoTarget(reply="w " * 8)
    model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "one two"}],
        context=LedgerContext(team=team_a, user=alice),
    )
    UsageRecord.objects.update(created_at=timezone.now() - timedelta(days=40))  # last month's spend
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    budget_reserve(team=team_a, estimate=Decimal(10))  # fits: nothing spent today
    assert BudgetWindow.objects.get(budget=budget).opening_spent == 0
