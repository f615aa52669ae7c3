"""The ledger's guarantee: rows written under a hold never take it past its estimate through device time.

Embeddings, ingestion, the tool index, prefill and the engine's generations write device-second
rows under a hold; whatever the work measured, the hold's rows stay within its reservation (the
seconds past it are not billed, and logged), while token costs are billed whole.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from apps.costs.models import ReservationStatus, Stage, UsageRecord
from apps.costs.pricing import Usage
from apps.costs.services import LedgerContext, price_set
from apps.costs.services.holds import hold_open
from tests.apps.costs.conftest import EARLY


@pytest.fixture
def device_price(db):
    # $0.001 per CPU second, $0.05 per GPU second, $1 per input token: easy to read.
    price, _ = price_set(
        model_name="test/embedder", input_per_mtok=Decimal(1_000_000), output_per_mtok=Decimal(0),
        per_cpu_second=Decimal("0.001"), per_gpu_second=Decimal("0.05"), effective_from=EARLY,
    )
    return price


@pytest.fixture
def ctx(team_a, alice):
    return LedgerContext(team=team_a, user=alice)


def test_device_seconds_past_a_tiny_hold_are_not_billed_and_it_settles_within_its_estimate(ctx, device_price, caplog):
    hold = hold_open(path="embeddings_api", context=ctx, estimate=Decimal("0.005"), description="a big batch")
    within = hold.record(stage=Stage.EMBED, model_name="test/embedder", usage=Usage(cpu_seconds=Decimal("1.5")),
                         price=device_price)
    assert (within.cpu_seconds, within.cost) == (Decimal("1.5"), Decimal("0.0015"))  # fits: untouched
    with caplog.at_level(logging.WARNING, logger="apps.costs.services.ledger"):
        # The embedding ran 12.5 s where the hold pays for 3.5 s more: only what it covers is billed.
        over = hold.record(stage=Stage.EMBED, model_name="test/embedder",
                           usage=Usage(cpu_seconds=Decimal("12.5")), price=device_price)
        late = hold.record(stage=Stage.EMBED, model_name="test/embedder",
                           usage=Usage(cpu_seconds=Decimal("2"), gpu_seconds=Decimal("0.1")), price=device_price)
    assert Decimal("3.49") < over.cpu_seconds < Decimal("3.5")
    assert (late.cpu_seconds, late.gpu_seconds, late.cost) == (0, 0, 0)  # nothing left to pay with
    assert "not billed" in caplog.text and f"reservation #{hold.reservation.pk}" in caplog.text
    reservation = hold.settle()
    assert reservation.status == ReservationStatus.SETTLED
    assert reservation.actual == within.cost + over.cost <= reservation.estimate == Decimal("0.005")
    assert reservation.estimate - reservation.actual < Decimal("0.00001")  # the hold was used, not wasted


def test_token_costs_under_a_hold_are_billed_whole_only_device_time_is_cut(ctx, device_price):
    hold = hold_open(path="embeddings_api", context=ctx, estimate=Decimal("3.01"), description="tokens")
    # 3 tokens at $1 and 0.4 GPU seconds at $0.05 ($0.02): the tokens fit, half the seconds do.
    record = hold.record(stage=Stage.EMBED, model_name="test/embedder",
                         usage=Usage(prompt_tokens=3, gpu_seconds=Decimal("0.4")), price=device_price)
    assert record.prompt_tokens == 3 and Decimal("0.19") < record.gpu_seconds < Decimal("0.2")
    assert record.cost <= Decimal("3.01")
    # Tokens past the hold are still billed in full (a remote endpoint's excess is its overage row).
    more = hold.record(stage=Stage.EMBED, model_name="test/embedder",
                       usage=Usage(prompt_tokens=2, cpu_seconds=Decimal("1")), price=device_price)
    assert (more.prompt_tokens, more.cpu_seconds, more.cost) == (2, 0, Decimal(2))
    assert UsageRecord.objects.filter(reservation=hold.reservation).count() == 2


def test_rows_without_a_hold_are_billed_as_measured(ctx, device_price):
    from apps.costs.services import usage_record

    record = usage_record(context=ctx, stage=Stage.EMBED, model_name="test/embedder",
                          usage=Usage(cpu_seconds=Decimal("120")), price=device_price)
    assert (record.cpu_seconds, record.cost) == (Decimal("120"), Decimal("0.12"))
