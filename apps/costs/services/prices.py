"""The price book: the price in force, the per-process cache of the hot path, new prices.

Prices are versioned: a new price is a new row from its ``effective_from`` on, and ledger rows keep
the price they were charged at.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from auditlog.receivers import log_create as audit_log_create
from auditlog.receivers import log_update as audit_log_update
from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.costs.models import ZERO, Price
from apps.costs.services.backend import on_postgresql


class PriceMissing(ValidationFailed):
    code = "price_missing"


class PriceStale(Exception):
    """A cached price is no longer the one in force (a statement that checked it did nothing)."""


def price_current(*, model_name: str, at: datetime | None = None) -> Price:
    """The price in force for ``model_name`` at ``at`` (now by default)."""
    at = at or timezone.now()
    price = Price.objects.filter(model_name=model_name, effective_from__lte=at).order_by("-effective_from").first()
    if price is None:
        raise PriceMissing(
            f"the price book has no price for model {model_name!r}: "
            "add one in the admin or run manage.py import_prices",
            detail={"model": model_name},
        )
    return price


# model name -> the Price row last seen in force for it (PostgreSQL hot path only).
_price_cache: dict[str, Price] = {}


def price_for_call(*, model_name: str, fresh: bool = False) -> Price:
    """The price to charge a model call: ``price_current`` on SQLite; on PostgreSQL from a per-process cache.

    A cached row is never trusted blindly: the statement that uses it (the reservation, or the
    ledger row of a call under a caller's reservation) checks in the database that it is still
    the row in force for the model at that moment with the same values, and does nothing
    otherwise (``PriceStale``); the caller then asks again with ``fresh=True``. So a new price,
    even one back-dated before now, applies from the next statement on, in every process.
    """
    if not on_postgresql():
        return price_current(model_name=model_name)
    price = None if fresh else _price_cache.get(model_name)
    if price is None:
        price = price_current(model_name=model_name)
        _price_cache[model_name] = price
    return price


def price_set(
    *,
    model_name: str,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cached_input_per_mtok: Decimal | None = None,
    per_gpu_second: Decimal = ZERO,
    per_cpu_second: Decimal = ZERO,
    effective_from: datetime | None = None,
    provider: str = "",
    source: str = "",
    batch_input_per_mtok: Decimal | None = None,
    batch_output_per_mtok: Decimal | None = None,
) -> tuple[Price, bool]:
    """Record a price from ``effective_from`` on. Returns (price, created).

    Idempotent: when the latest price at that date already has these values, nothing is added.
    History is kept: a different price is a new row; old ledger rows keep what they were charged.
    """
    effective_from = effective_from or timezone.now()
    values = _stored_values({
        "input_per_mtok": input_per_mtok, "output_per_mtok": output_per_mtok,
        "cached_input_per_mtok": cached_input_per_mtok, "per_gpu_second": per_gpu_second,
        "per_cpu_second": per_cpu_second, "batch_input_per_mtok": batch_input_per_mtok,
        "batch_output_per_mtok": batch_output_per_mtok,
    })
    latest = (
        Price.objects.filter(model_name=model_name, effective_from__lte=effective_from)
        .order_by("-effective_from")
        .first()
    )
    if latest is not None and _unchanged(latest, values):
        return latest, False
    price, created = Price.objects.update_or_create(
        model_name=model_name,
        effective_from=effective_from,
        defaults={**values, "provider": provider, "source": source},
    )
    return price, created


_PRICE_FIELDS = (
    "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "per_gpu_second", "per_cpu_second",
    "batch_input_per_mtok", "batch_output_per_mtok",
)
_NULLABLE = {"cached_input_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok"}


def _stored_values(entry: dict) -> dict[str, Decimal | None]:
    """A price's values as the row stores them (10 decimal places; blank non-nullable ones are 0), so an
    unchanged price compares equal to its row."""
    values: dict[str, Decimal | None] = {}
    for key in _PRICE_FIELDS:
        value = entry.get(key)
        if value is None:
            values[key] = None if key in _NULLABLE else ZERO
        else:
            values[key] = Decimal(value).quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_UP)
    return values


def _unchanged(latest: Price, values: dict[str, Decimal | None]) -> bool:
    """Whether the price in force already has these values (then setting them again adds nothing)."""
    return all(getattr(latest, key) == values[key] for key in _PRICE_FIELDS)


def prices_set_many(*, entries: list[dict], effective_from: datetime, source: str = "") -> tuple[int, int]:
    """``price_set`` for a whole price table at once: returns (added, unchanged).

    Same rules per entry (a dict of ``price_set``'s keyword arguments without ``effective_from``
    and ``source``): nothing is added where the price in force at ``effective_from`` already has
    these values, a different price is a new row. One query reads the prices in force and one bulk
    insert writes the new rows, instead of two statements per model (a 3,500-model LiteLLM table).
    """
    wanted: dict[str, dict] = {}
    for entry in entries:
        wanted[entry["model_name"]] = {**_stored_values(entry), "provider": entry.get("provider", "")}
    in_force: dict[str, Price] = {}
    rows = Price.objects.filter(model_name__in=list(wanted), effective_from__lte=effective_from)
    for price in rows.order_by("model_name", "-effective_from"):
        in_force.setdefault(price.model_name, price)
    new: list[Price] = []
    replaced: list[Price] = []
    for name, values in wanted.items():
        latest = in_force.get(name)
        if latest is not None and _unchanged(latest, values):
            continue
        if latest is not None and latest.effective_from == effective_from:
            replaced.append(latest)  # same date, other values: update_or_create's rule in price_set
            for key, value in values.items():
                setattr(latest, key, value)
            latest.source = source
        else:
            new.append(Price(model_name=name, effective_from=effective_from, source=source, **values))
    # Bulk writes send no save signals: each price still gets its audit-log entry, as a save would.
    for price in replaced:
        audit_log_update(sender=Price, instance=price)
    if replaced:
        Price.objects.bulk_update(replaced, [*_PRICE_FIELDS, "provider", "source"], batch_size=500)
    for price in Price.objects.bulk_create(new, batch_size=500):
        audit_log_create(sender=Price, instance=price, created=True)
    return len(new) + len(replaced), len(wanted) - len(new) - len(replaced)
