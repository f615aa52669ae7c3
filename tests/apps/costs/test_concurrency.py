"""200 concurrent metered requests on a budget that fits exactly 50: never overspend, the 50 succeed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, connections

from apps.costs import metering
from apps.costs.metering import model_call
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.selectors import budget_status
from apps.costs.services import BudgetExceeded, LedgerContext, budget_save
from workers.runtime.meter import EchoTarget

REQUESTS = 200
FITS = 50


@pytest.mark.django_db(transaction=True)
def test_it_never_overspends_under_concurrency_and_the_ones_that_fit_succeed(
    team_a, alice, echo_endpoint, monkeypatch
):
    # Each call's actual cost equals its estimate (the reply uses the whole cap), so exactly
    # FITS calls fit, however the threads interleave.
    target = EchoTarget(reply=" ".join(["w"] * echo_endpoint.max_output_tokens))
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: target)
    messages = [{"role": "user", "content": "one two"}]
    per_call = Decimal(2 * 1 + echo_endpoint.max_output_tokens * 2)
    budget = budget_save(team=team_a, hard_limit=per_call * FITS, period="day")
    context = LedgerContext(team=team_a, user=alice)

    def one(_: int) -> str:
        try:
            model_call(endpoint=echo_endpoint, messages=messages, context=context)
            return "ok"
        except BudgetExceeded:
            return "refused"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=24) as pool:
        outcomes = list(pool.map(one, range(REQUESTS)))

    assert outcomes.count("ok") == FITS
    assert outcomes.count("refused") == REQUESTS - FITS
    status = budget_status(budget=budget)
    assert status.spent == budget.hard_limit  # spent exactly the limit, never more
    assert status.reserved == 0
    assert UsageRecord.objects.count() == FITS
    assert sum(r.cost for r in UsageRecord.objects.all()) == budget.hard_limit
    assert Reservation.objects.filter(status=ReservationStatus.SETTLED).count() == FITS
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
    assert connection.vendor in {"postgresql", "sqlite"}
    # The ledger the race wrote reconciles: rows, windows, reservations (CI's reconciliation step).
    assert [str(difference) for difference in ledger_reconcile()] == []
