"""Holds grow with the work: ``Hold.ensure`` extends a held reservation to cover what was spent plus the
next step's bound, against every window it holds, or refuses (402) leaving everything as it was."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.errors import ValidationFailed
from apps.costs.models import ReservationStatus
from apps.costs.pricing import Usage
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.selectors import budget_status
from apps.costs.services import BudgetExceeded, LedgerContext, budget_save, reservation_extend
from apps.costs.services.holds import hold_open

pytestmark = pytest.mark.django_db


def test_ensure_grows_the_hold_to_spent_plus_the_next_bound_on_every_window(team_a, alice, echo_price):
    team_budget = budget_save(team=team_a, hard_limit=Decimal(10), period="day")
    user_budget = budget_save(team=team_a, hard_limit=Decimal(8), period="month", scope="user", user=alice)
    hold = hold_open(path="query", context=LedgerContext(team=team_a, user=alice), estimate=Decimal(1))
    # The first step spent $1 (one token at $1); the next needs up to $2: the hold grows to $3.
    hold.record(stage="generate", model_name="test/echo", usage=Usage(prompt_tokens=1), price=echo_price)
    assert hold.ensure(Decimal(2)) == Decimal(2)
    assert hold.reservation.estimate == Decimal(3)
    for budget in (team_budget, user_budget):
        assert budget_status(budget=budget).reserved == Decimal(3)
    # Already covered: nothing changes.
    assert hold.ensure(Decimal("1.5")) == 0
    assert hold.reservation.estimate == Decimal(3)
    hold.settle()
    status = budget_status(budget=team_budget)
    assert (status.spent, status.reserved) == (Decimal(1), Decimal(0))
    assert ledger_reconcile(since=None) == []


def test_ensure_that_would_pass_a_budget_raises_402_and_changes_nothing(team_a, alice):
    budget = budget_save(team=team_a, hard_limit=Decimal(5), period="day")
    other = hold_open(path="query", context=LedgerContext(team=team_a), estimate=Decimal(2))
    hold = hold_open(path="query", context=LedgerContext(team=team_a, user=alice), estimate=Decimal(2))
    assert hold.ensure(Decimal(3)) == Decimal(1)  # 2 + 3 = 5: exactly the limit fits
    with pytest.raises(BudgetExceeded) as caught:
        hold.ensure(Decimal("3.0000000001"))
    assert caught.value.detail["budget_id"] == budget.pk
    assert hold.reservation.estimate == Decimal(3)
    hold.reservation.refresh_from_db()
    assert hold.reservation.estimate == Decimal(3)
    assert budget_status(budget=budget).reserved == Decimal(5)
    other.release()
    # The room the other hold gave back is there for this one.
    assert hold.ensure(Decimal(5)) == Decimal(2)
    assert budget_status(budget=budget).reserved == Decimal(5)


def test_a_hold_that_is_no_longer_held_cannot_grow(team_a):
    hold = hold_open(path="query", context=LedgerContext(team=team_a), estimate=Decimal(1))
    hold.release()
    assert hold.reservation.status == ReservationStatus.RELEASED
    with pytest.raises(ValidationFailed):
        reservation_extend(reservation=hold.reservation, amount=Decimal(1))


def test_growth_is_rounded_up_to_the_stored_places(team_a):
    hold = hold_open(path="query", context=LedgerContext(team=team_a), estimate=Decimal(0))
    hold.ensure(Decimal("0.00000000001"))  # below the 10th place
    hold.reservation.refresh_from_db()
    assert hold.reservation.estimate == Decimal("0.0000000001")
