"""Shared fixtures for the cost tests: an echo endpoint with a round price, and the echo engine.

Prices are chosen so that money is easy to read: $1 per input token and $2 per output token
(1,000,000 and 2,000,000 USD per 1M tokens), and no per-second charge.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.costs import metering
from apps.costs.models import ModelEndpoint
from apps.costs.services import LedgerContext, price_set
from workers.runtime.meter import EchoTarget

EARLY = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def echo_price(db):
    price, _ = price_set(
        model_name="test/echo",
        input_per_mtok=Decimal(1_000_000),
        output_per_mtok=Decimal(2_000_000),
        effective_from=EARLY,
    )
    return price


@pytest.fixture
def echo_endpoint(db, echo_price):
    # kind "openai": no per-second worst case, so the estimate is tokens × price only.
    return ModelEndpoint.objects.create(
        name="echo", kind="openai", base_url="http://echo.invalid/v1", price_name="test/echo", max_output_tokens=8
    )


@pytest.fixture
def echo(monkeypatch):
    """Make model_call run the engine's EchoTarget; set ``echo.target`` to change its behaviour."""

    class Holder:
        target = EchoTarget()

    monkeypatch.setattr(metering, "_target_override", lambda endpoint: Holder.target)
    return Holder


@pytest.fixture
def ctx(team_a, alice):
    return LedgerContext(team=team_a, user=alice)


