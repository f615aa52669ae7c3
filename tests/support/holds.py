"""Tests that need a hold that cannot grow (as when every budget is at its limit) without arranging the budgets."""

from __future__ import annotations

from typing import Any

from apps.costs.services import BudgetExceeded


def refuse_hold_growth(monkeypatch: Any) -> list[Any]:
    """Make every attempt to grow a hold fail as a full budget would; returns the refused amounts."""
    from apps.costs.services import holds

    refused: list[Any] = []

    def refuse(*, reservation: Any, amount: Any) -> Any:
        refused.append(amount)
        raise BudgetExceeded(f"test: reservation #{reservation.pk} may not grow by ${amount}")

    # Every hold grows through ``holds.hold_cover`` (``Hold.ensure``, the metered generations' allowances).
    monkeypatch.setattr(holds, "reservation_extend", refuse)
    return refused
