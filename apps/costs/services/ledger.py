"""Writes to the ledger: one UsageRecord per model call, charged at the price copied onto the row.

A metered call under its own reservation writes its row and settles the reservation together
(one statement on PostgreSQL, so the row commits with its spend).

A row written under a hold never takes the hold's rows past its estimate through device time
(``hold_clamp``): its GPU/CPU seconds are cut so that the rows under the reservation stay within
it, the seconds left out are logged and not billed. Token costs are never cut (a remote
endpoint's excess is its overage row, ``apps.costs.billing``). See docs/costs.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from django.db import transaction
from django.utils import timezone

from apps.costs import postgres_hot_path
from apps.costs.models import ZERO, Price, Reservation, ReservationStatus, UsageRecord
from apps.costs.pricing import MONEY_QUANTUM, Usage, cached_input_price, cost_of
from apps.costs.services.alerts import soft_alerts_after_commit, windows_due_alert
from apps.costs.services.backend import TryAgain, budget_lock, on_postgresql
from apps.costs.services.budgets import reservation_settle
from apps.costs.services.prices import price_for_call
from apps.costs.services.profiles import usage_row_origin

logger = logging.getLogger(__name__)

_SECONDS = Decimal("0.000001")  # the ledger's precision for device seconds


@dataclass(frozen=True)
class LedgerContext:
    """Who a model call is billed to, and what it belonged to."""

    team: object
    user: object | None = None
    api_key: object | None = None
    query_run_id: int | None = None
    agent_run_id: int | None = None
    pipeline_name: str = ""
    # A shadow baseline's rows point back to the query run whose savings they measure.
    shadow_of_query_run_id: int | None = None

    def __post_init__(self) -> None:
        # An anonymous or unsaved user (the web process's AnonymousUser, a script's None) bills as nobody.
        if not getattr(self.user, "pk", None):
            object.__setattr__(self, "user", None)


def usage_record(
    *,
    context: LedgerContext,
    stage: str,
    model_name: str,
    usage: Usage,
    price: Price | None,
    latency_ms: int = 0,
    finish_reason: str = "",
    endpoint=None,
    reservation: Reservation | None = None,
) -> UsageRecord:
    """Write one ledger row, charging ``usage`` at ``price`` (copied onto the row).

    Under a ``reservation`` the row's device seconds are clamped to what the hold still covers
    (``hold_clamp``)."""
    with budget_lock():  # SQLite: one writer at a time
        if reservation is not None and price is not None and _has_seconds(usage):
            usage = hold_clamp(usage=usage, price=price, reservation=reservation,
                               billed=hold_billed(reservation), stage=stage)
        record = _usage_record_build(
            context=context, stage=stage, model_name=model_name, usage=usage, price=price, latency_ms=latency_ms,
            finish_reason=finish_reason, endpoint=endpoint, reservation=reservation,
        )
        record.save(force_insert=True)
    return record


def _seconds_as_stored(usage: Usage) -> Usage:
    return replace(usage, gpu_seconds=money_seconds(usage.gpu_seconds), cpu_seconds=money_seconds(usage.cpu_seconds))


def _has_seconds(usage: Usage) -> bool:
    return bool(usage.gpu_seconds) or bool(usage.cpu_seconds)


def hold_billed(reservation: Reservation) -> Decimal:
    """What the rows already written under ``reservation`` cost."""
    return UsageRecord.objects.filter(reservation_id=reservation.pk).total_cost()


def hold_clamp(*, usage: Usage, price: Price, reservation: Reservation, billed: Decimal, stage: str = "") -> Usage:
    """``usage`` with its device seconds cut so that ``billed`` (the rows already under ``reservation``)
    plus its cost stays within the reservation's estimate: settlement ≤ hold.

    The seconds left out are the operator's: logged as a warning, not billed.
    """
    usage = _seconds_as_stored(usage)
    clamped = device_seconds_within(usage=usage, price=price, room=reservation.estimate - billed)
    if clamped != usage:
        unbilled = (usage.gpu_seconds - clamped.gpu_seconds) + (usage.cpu_seconds - clamped.cpu_seconds)
        logger.warning(
            "reservation #%s (%s): a %s row would take its rows past the hold's %s; %s device-seconds not billed",
            reservation.pk, reservation.description, stage or "ledger", reservation.estimate, unbilled,
        )
    return clamped


def device_seconds_within(*, usage: Usage, price: Price, room: Decimal) -> Usage:
    """``usage`` with its device seconds cut so that its cost at ``price`` stays within ``room``.

    Only device time is cut, in proportion (GPU and CPU alike), rounded down to the ledger's
    precision; token costs stay whole (a remote endpoint's excess is the overage row's business).
    Unchanged when it fits, or when its device time is free at ``price``.
    """
    usage = _seconds_as_stored(usage)
    if cost_of(usage=usage, price=price) <= room:
        return usage
    gpu, cpu = Decimal(str(usage.gpu_seconds)), Decimal(str(usage.cpu_seconds))
    device = gpu * price.per_gpu_second + cpu * price.per_cpu_second
    if device <= 0:
        return usage  # free device time: nothing here to clamp
    tokens = cost_of(usage=replace(usage, gpu_seconds=Decimal(0), cpu_seconds=Decimal(0)), price=price)
    # One quantum short, so the row's rounding (half up, 10 places) cannot pass the room left.
    share = max(Decimal(0), min(Decimal(1), (room - tokens - MONEY_QUANTUM) / device))
    clamped = replace(usage, gpu_seconds=(gpu * share).quantize(_SECONDS, rounding=ROUND_DOWN),
                      cpu_seconds=(cpu * share).quantize(_SECONDS, rounding=ROUND_DOWN))
    if cost_of(usage=clamped, price=price) > room:
        clamped = replace(usage, gpu_seconds=Decimal(0), cpu_seconds=Decimal(0))
    return clamped


def _usage_record_build(
    *, context, stage, model_name, usage, price, latency_ms, finish_reason, endpoint, reservation
) -> UsageRecord:
    """The (unsaved) ledger row for ``usage`` charged at ``price``, with the prices copied onto it."""
    # Charged for the seconds the row keeps (6 places), so the row recomputes to its own cost.
    usage = _seconds_as_stored(usage)
    cost = cost_of(usage=usage, price=price) if price is not None else ZERO
    device, worker = usage_row_origin(gpu_seconds=usage.gpu_seconds, cpu_seconds=usage.cpu_seconds)
    return UsageRecord(
        team=context.team,
        user=context.user,
        api_key=context.api_key,
        query_run_id=context.query_run_id,
        agent_run_id=context.agent_run_id,
        shadow_of_query_run_id=context.shadow_of_query_run_id,
        pipeline_name=context.pipeline_name,
        stage=stage,
        model_name=model_name,
        endpoint=endpoint,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        gpu_seconds=money_seconds(usage.gpu_seconds),
        cpu_seconds=money_seconds(usage.cpu_seconds),
        latency_ms=latency_ms,
        finish_reason=finish_reason[:32],
        cost=cost,
        price=price,
        price_input_per_mtok=price.input_per_mtok if price else ZERO,
        price_output_per_mtok=price.output_per_mtok if price else ZERO,
        price_cached_input_per_mtok=cached_input_price(price) if price else ZERO,
        price_per_gpu_second=price.per_gpu_second if price else ZERO,
        price_per_cpu_second=price.per_cpu_second if price else ZERO,
        reservation=reservation,
        device=device,
        worker=worker,
    )


def _usage_record_and_settle(
    *,
    context: LedgerContext,
    stage: str,
    model_name: str,
    usage: Usage,
    price: Price,
    priced_at: datetime,
    latency_ms: int,
    finish_reason: str,
    endpoint,
    reservation: Reservation | None,
    settle: bool,
) -> UsageRecord:
    """The metered call's ledger row, and (``settle``) the settlement of its own ``reservation`` to the row's cost.

    PostgreSQL: one statement, so the row commits with its spend. Without ``settle`` the row
    is only written while ``price`` (possibly cached) is still the one in force at ``priced_at``;
    otherwise it is charged again at the fresh price. (With ``settle`` the reservation's own
    statement already checked the price.) SQLite: the ORM, in one transaction under the lock.
    """
    if not on_postgresql():
        with budget_lock(), transaction.atomic():
            record = usage_record(
                context=context, stage=stage, model_name=model_name, usage=usage, price=price,
                latency_ms=latency_ms, finish_reason=finish_reason, endpoint=endpoint, reservation=reservation,
            )
            if settle:
                reservation_settle(reservation=reservation, actual=record.cost)
        return record
    # The hold's clamp (``hold_clamp``). A call settling its own reservation is its only row: nothing
    # to read back (the hot path stays one statement); under a caller's hold, the rows so far.
    billed = None
    if reservation is not None and _has_seconds(usage):
        billed = ZERO if settle else hold_billed(reservation)
    unclamped = usage
    for _ in range(5):
        if billed is not None:
            usage = hold_clamp(usage=unclamped, price=price, reservation=reservation, billed=billed, stage=stage)
        record = _usage_record_build(
            context=context, stage=stage, model_name=model_name, usage=usage, price=price, latency_ms=latency_ms,
            finish_reason=finish_reason, endpoint=endpoint, reservation=reservation,
        )
        finished_at = timezone.now()
        outcome = postgres_hot_path.settle(
            reservation_id=reservation.pk if settle else None,
            actual=record.cost,
            finished_at=finished_at,
            record=record,
            price=None if settle else price,
            price_at=priced_at,
        )
        if outcome.record_id is None:  # the price changed since it was cached: charge the one in force
            price = price_for_call(model_name=price.model_name, fresh=True)
            continue
        if settle and outcome.was is not None:
            reservation.status = ReservationStatus.SETTLED
            reservation.actual = record.cost
            reservation.finished_at = finished_at
            soft_alerts_after_commit(windows_due_alert(outcome.windows))
        return record
    raise TryAgain(f"the price of {model_name!r} kept changing while the call was being billed; try again")


def money_seconds(value) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.000001"))
