"""Writes to the ledger: one UsageRecord per model call, charged at the price copied onto the row.

A metered call under its own reservation writes its row and settles the reservation together
(one statement on PostgreSQL, so the row commits with its spend).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from apps.costs import postgres_hot_path
from apps.costs.models import ZERO, Price, Reservation, ReservationStatus, UsageRecord
from apps.costs.pricing import Usage, cached_input_price, cost_of
from apps.costs.services.alerts import soft_alerts_after_commit, windows_due_alert
from apps.costs.services.backend import TryAgain, budget_lock, on_postgresql
from apps.costs.services.budgets import reservation_settle
from apps.costs.services.prices import price_for_call
from apps.costs.services.profiles import usage_row_origin


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
    """Write one ledger row, charging ``usage`` at ``price`` (copied onto the row)."""
    record = _usage_record_build(
        context=context, stage=stage, model_name=model_name, usage=usage, price=price, latency_ms=latency_ms,
        finish_reason=finish_reason, endpoint=endpoint, reservation=reservation,
    )
    with budget_lock():  # SQLite: one writer at a time
        record.save(force_insert=True)
    return record


def _usage_record_build(
    *, context, stage, model_name, usage, price, latency_ms, finish_reason, endpoint, reservation
) -> UsageRecord:
    """The (unsaved) ledger row for ``usage`` charged at ``price``, with the prices copied onto it.

    The cost is computed from the seconds as the row stores them (6 places), so that recomputing a
    row from what it holds (``apps.costs.reconciliation``) gives its cost exactly."""
    usage = dataclasses.replace(
        usage, gpu_seconds=money_seconds(usage.gpu_seconds), cpu_seconds=money_seconds(usage.cpu_seconds)
    )
    cost = cost_of(usage=usage, price=price) if price is not None else ZERO
    device, worker = usage_row_origin(gpu_seconds=usage.gpu_seconds, cpu_seconds=usage.cpu_seconds)
    return UsageRecord(
        team=context.team,
        user=context.user if getattr(context.user, "pk", None) else None,
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
    for _ in range(5):
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
