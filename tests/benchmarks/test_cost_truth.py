"""The cost-truth benchmark's metrics, read from the database: what counts as overspend, which path a hold served."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.costs.models import Stage
from apps.costs.pricing import Usage
from apps.costs.services import LedgerContext, budget_reserve, budget_save, reservation_settle
from apps.costs.services.holds import hold_open
from apps.costs.services.ledger import usage_record
from benchmarks.cost_truth import WindowMonitor, _path_of, hold_over_actual, overspend_usd, paths_checked


def _monitor(peaks: dict[int, Decimal] | None = None) -> WindowMonitor:
    monitor = WindowMonitor(lambda: [])
    monitor.peak_spent = dict(peaks or {})
    return monitor


def test_a_reservations_path_is_read_from_its_description():
    assert _path_of("ingest: 3 documents of corpus 4") == "ingest"
    assert _path_of("tool_search") == "tool_search"
    assert _path_of("query on naive-top3") == "query"
    assert _path_of("agent helper") == "agent_step"
    assert _path_of("generate on remote-over") == "model_call"
    assert _path_of("something else entirely") is None


@pytest.mark.django_db
def test_hold_open_leads_the_description_with_its_path(team_a, alice):
    hold = hold_open(
        path="search_api",
        context=LedgerContext(team=team_a, user=alice),
        estimate=Decimal(1),
        description="query embedding",
    )
    assert hold.reservation.description == "search_api: query embedding"
    assert (
        hold_open(
            path="ingest", context=LedgerContext(team=team_a), estimate=Decimal(1)
        ).reservation.description
        == "ingest"
    )


@pytest.mark.django_db
def test_overspend_counts_a_settlement_beyond_its_estimate_unless_an_overage_row_covers_it(team_a):
    budget_save(team=team_a, hard_limit=Decimal(100), period="total")
    context = LedgerContext(team=team_a)
    fits = budget_reserve(team=team_a, estimate=Decimal(10), description="model_call: generate on x")
    usage_record(
        context=context, stage=Stage.GENERATE, model_name="m", usage=Usage(), price=None, reservation=fits
    )
    reservation_settle(reservation=fits, actual=Decimal(4))
    over = budget_reserve(team=team_a, estimate=Decimal(10), description="model_call: generate on x")
    reservation_settle(reservation=over, actual=Decimal(13))  # 3 beyond its bound, no overage row

    covered = budget_reserve(team=team_a, estimate=Decimal(10), description="model_call: generate on x")
    usage_record(
        context=context, stage=Stage.OVERAGE, model_name="m", usage=Usage(), price=None, reservation=covered
    )
    reservation_settle(reservation=covered, actual=Decimal(12))  # 2 beyond, billed as a recorded overage

    overspend, windows = overspend_usd([team_a.pk], _monitor())
    assert overspend == Decimal(3)
    assert sorted(hold_over_actual([team_a.pk])) == pytest.approx(sorted([2.5, 10 / 13, 10 / 12]))
    assert paths_checked([team_a.pk])[0] == ["model_call"]  # only the one with a ledger row


@pytest.mark.django_db
def test_overspend_takes_the_worst_moment_the_monitor_saw(team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="total")
    reservation = budget_reserve(team=team_a, estimate=Decimal(5), description="query on p")
    reservation_settle(reservation=reservation, actual=Decimal(5))
    window = budget.windows.get()
    assert overspend_usd([team_a.pk], _monitor())[0] == 0
    assert overspend_usd([team_a.pk], _monitor({window.pk: Decimal("12.5")}))[0] == Decimal("2.5")
