"""Writes for costs, one module per concern; this package re-exports their names for importers.

- ``prices``: the price book (``price_current``, ``price_for_call``, ``price_set``, ``prices_set_many``);
- ``budgets``: budgets and their reservations (``budget_reserve``, ``reservation_settle``, ...);
- ``alerts``: soft-limit e-mails (``budget_soft_alerts_send``);
- ``ledger``: usage records (``usage_record``, ``LedgerContext``);
- ``backend``: the PostgreSQL vs SQLite write path (``TryAgain``).

New code may import from the concern's module directly.
"""

from __future__ import annotations

from apps.costs.pricing import money
from apps.costs.services.alerts import budget_soft_alerts_send
from apps.costs.services.backend import TryAgain
from apps.costs.services.budgets import (
    RESERVATION_TTL_S,
    BudgetExceeded,
    budget_exceeded_error,
    budget_reserve,
    budget_save,
    budget_window,
    budgets_applicable,
    period_start,
    reservation_close,
    reservation_extend,
    reservation_release,
    reservation_settle,
    reservations_expire,
)
from apps.costs.services.ledger import LedgerContext, money_seconds, usage_record
from apps.costs.services.prices import (
    PriceMissing,
    PriceStale,
    price_current,
    price_for_call,
    price_set,
    prices_set_many,
)

__all__ = [
    "RESERVATION_TTL_S",
    "BudgetExceeded",
    "LedgerContext",
    "PriceMissing",
    "PriceStale",
    "TryAgain",
    "budget_exceeded_error",
    "budget_reserve",
    "budget_save",
    "budget_soft_alerts_send",
    "budget_window",
    "budgets_applicable",
    "money",
    "money_seconds",
    "period_start",
    "price_current",
    "price_for_call",
    "price_set",
    "prices_set_many",
    "reservation_close",
    "reservation_release",
    "reservation_extend",
    "reservation_settle",
    "reservations_expire",
    "usage_record",
]
