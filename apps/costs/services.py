"""Writes for the price book, budgets, reservations and the ledger.

Budget enforcement happens before work runs: ``budget_reserve`` holds the worst-case cost
against every budget that applies, atomically (row locks on PostgreSQL, a process lock on
SQLite), and refuses with 402 if any would go over. ``reservation_settle`` swaps the hold
for the actual cost; ``reservation_release`` drops it on failure; expired holds (dead
workers) are released by ``reservations_expire``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core.errors import ServiceError, ValidationFailed
from apps.costs import statements
from apps.costs.models import (
    ZERO,
    Budget,
    BudgetPeriod,
    BudgetScope,
    BudgetWindow,
    Price,
    Reservation,
    ReservationStatus,
    UsageRecord,
)
from apps.costs.pricing import Usage, cached_input_price, cost_of, money

logger = logging.getLogger(__name__)

RESERVATION_TTL_S = 900
_EXPIRY_SWEEP_EVERY_S = 30.0
_last_expiry_sweep = 0.0
# SQLite has no row locks: serialise budget writes within the (single) embedded process.
_sqlite_budget_lock = threading.RLock()


class BudgetExceeded(ServiceError):
    code = "budget_exceeded"
    http_status = 402


class PriceMissing(ValidationFailed):
    code = "price_missing"


class TryAgain(ServiceError):
    """Rows a statement depends on kept changing under it (practically never): the request may be retried."""

    code = "try_again"
    http_status = 503


def _on_postgresql() -> bool:
    return connection.vendor == "postgresql"


@contextmanager
def _budget_lock():
    if connection.vendor == "sqlite":
        with _sqlite_budget_lock:
            yield
    else:
        yield


# --------------------------------------------------------------------------- price book


def price_current(*, model_name: str, at: datetime | None = None) -> Price:
    """The price in force for ``model_name`` at ``at`` (now by default)."""
    at = at or timezone.now()
    price = Price.objects.filter(model_name=model_name, effective_from__lte=at).order_by("-effective_from").first()
    if price is None:
        raise PriceMissing(
            f"the price book has no price for model {model_name!r}: add one in the admin or run manage.py import_prices",
            detail={"model": model_name},
        )
    return price


# model name -> the Price row last seen in force for it (PostgreSQL hot path only).
_price_cache: dict[str, Price] = {}


class PriceStale(Exception):
    """A cached price is no longer the one in force (a statement that checked it did nothing)."""


def price_for_call(*, model_name: str, fresh: bool = False) -> Price:
    """The price to charge a model call: ``price_current`` on SQLite; on PostgreSQL from a per-process cache.

    A cached row is never trusted blindly: the statement that uses it (the reservation, or the
    ledger row of a call under a caller's reservation) checks in the database that it is still
    the row in force for the model at that moment with the same values, and does nothing
    otherwise (``PriceStale``); the caller then asks again with ``fresh=True``. So a new price,
    even one back-dated before now, applies from the next statement on, in every process.
    """
    if not _on_postgresql():
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
) -> tuple[Price, bool]:
    """Record a price from ``effective_from`` on. Returns (price, created).

    Idempotent: when the latest price at that date already has these values, nothing is added.
    History is kept: a different price is a new row; old ledger rows keep what they were charged.
    """
    effective_from = effective_from or timezone.now()
    values = {
        "input_per_mtok": Decimal(input_per_mtok),
        "output_per_mtok": Decimal(output_per_mtok),
        "cached_input_per_mtok": None if cached_input_per_mtok is None else Decimal(cached_input_per_mtok),
        "per_gpu_second": Decimal(per_gpu_second),
        "per_cpu_second": Decimal(per_cpu_second),
    }
    latest = (
        Price.objects.filter(model_name=model_name, effective_from__lte=effective_from)
        .order_by("-effective_from")
        .first()
    )
    if latest is not None and all(getattr(latest, key) == value for key, value in values.items()):
        return latest, False
    price, created = Price.objects.update_or_create(
        model_name=model_name,
        effective_from=effective_from,
        defaults={**values, "provider": provider, "source": source},
    )
    return price, created


# --------------------------------------------------------------------------- budgets


def period_start(period: str, at: datetime) -> datetime:
    """The start of the budget period that contains ``at``, in the configured budget timezone."""
    zone = ZoneInfo(settings.PARSIMONY_BUDGET_TIMEZONE)
    local = at.astimezone(zone)
    if period == BudgetPeriod.TOTAL:
        return datetime(1970, 1, 1, tzinfo=zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return midnight
    if period == BudgetPeriod.WEEK:
        return midnight - timedelta(days=midnight.weekday())
    if period == BudgetPeriod.MONTH:
        return midnight.replace(day=1)
    raise ValidationFailed(f"unknown budget period {period!r} (valid: {', '.join(BudgetPeriod.values)})")


def budgets_applicable(*, team, user=None, api_key=None):
    """Every enabled budget that a request by (team, user, api_key) counts against."""
    who = Q(scope=BudgetScope.TEAM)
    if user is not None and getattr(user, "pk", None):
        who |= Q(scope=BudgetScope.USER, user=user)
    if api_key is not None:
        who |= Q(scope=BudgetScope.API_KEY, api_key=api_key)
    return Budget.objects.filter(who, team=team, enabled=True).order_by("pk")


def budget_window(*, budget: Budget, at: datetime | None = None) -> BudgetWindow:
    start = period_start(budget.period, at or timezone.now())
    window, _ = BudgetWindow.objects.get_or_create(budget=budget, period_start=start)
    return window


def _describe(budget: Budget) -> str:
    target = {
        BudgetScope.TEAM: f"team '{budget.team.name}'",
        BudgetScope.USER: f"user '{getattr(budget.user, 'username', '?')}'",
        BudgetScope.API_KEY: f"API key '{getattr(budget.api_key, 'name', '?')}'",
    }[BudgetScope(budget.scope)]
    return f"the {budget.period} budget of {target}"


def _windows_locked(*, budgets: list[Budget], at: datetime) -> list[BudgetWindow]:
    """The current window of each budget, locked FOR UPDATE in primary-key order (no deadlocks).

    One query when the windows exist (the common case); a missing one is created first.
    """
    starts = {budget.pk: period_start(budget.period, at) for budget in budgets}
    match = Q()
    for budget_id, start in starts.items():
        match |= Q(budget_id=budget_id, period_start=start)
    locked = BudgetWindow.objects.select_for_update().filter(match).order_by("pk")
    windows = list(locked)
    if len(windows) < len(budgets):
        have = {window.budget_id for window in windows}
        for budget in budgets:
            if budget.pk not in have:
                BudgetWindow.objects.get_or_create(budget=budget, period_start=starts[budget.pk])
        windows = list(locked.all())
    return windows


def budget_exceeded_error(*, budget: Budget, window: BudgetWindow, estimate: Decimal) -> BudgetExceeded:
    """The 402 for a request that does not fit: names the budget, its limit, spent, reserved, estimate, overage."""
    over_by = window.spent + window.reserved + estimate - budget.hard_limit
    return BudgetExceeded(
        f"{_describe(budget)} would be exceeded: limit ${budget.hard_limit:.6f}, spent "
        f"${window.spent:.6f}, reserved ${window.reserved:.6f}, this request needs up to "
        f"${estimate:.6f} (over by ${over_by:.6f})",
        detail={
            "budget_id": budget.pk,
            "budget": _describe(budget),
            "scope": budget.scope,
            "period": budget.period,
            "period_start": window.period_start.isoformat(),
            "limit": str(budget.hard_limit),
            "spent": str(window.spent),
            "reserved": str(window.reserved),
            "estimate": str(estimate),
            "over_by": str(over_by),
        },
    )


def budget_reserve(
    *,
    team,
    estimate: Decimal,
    user=None,
    api_key=None,
    description: str = "",
    ttl_s: int = RESERVATION_TTL_S,
) -> Reservation:
    """Hold ``estimate`` against every applicable budget, or raise BudgetExceeded naming the first that blocks.

    PostgreSQL: one statement (``statements.reserve``): the applicable budgets, their windows
    locked FOR UPDATE in id order, the check, the bump, the reservation and its window links.
    SQLite: the ORM under the process lock.
    """
    return _reserve(
        team=team, estimate=estimate, user=user, api_key=api_key, description=description, ttl_s=ttl_s
    )


def _reserve(
    *,
    team,
    estimate: Decimal,
    user=None,
    api_key=None,
    description: str = "",
    ttl_s: int = RESERVATION_TTL_S,
    price: Price | None = None,
) -> Reservation:
    """``budget_reserve``; with ``price`` (PostgreSQL) it also checks in the same statement that ``price``
    is still the one in force, and raises PriceStale (having done nothing) when it is not."""
    if estimate < 0:
        raise ValidationFailed("a cost estimate cannot be negative")
    _maybe_sweep_expired()
    now = timezone.now()
    user = user if getattr(user, "pk", None) else None
    if _on_postgresql():
        return _reserve_one_statement(
            team=team, estimate=estimate, user=user, api_key=api_key, description=description,
            ttl_s=ttl_s, price=price, now=now,
        )
    with _budget_lock(), transaction.atomic():
        budgets = list(budgets_applicable(team=team, user=user, api_key=api_key))
        windows = _windows_locked(budgets=budgets, at=now) if budgets else []
        budget_by_id = {budget.pk: budget for budget in budgets}
        for window in windows:
            budget = budget_by_id[window.budget_id]
            if window.spent + window.reserved + estimate > budget.hard_limit:
                raise budget_exceeded_error(budget=budget, window=window, estimate=estimate)
        if windows:
            BudgetWindow.objects.filter(pk__in=[window.pk for window in windows]).update(
                reserved=F("reserved") + estimate
            )
        reservation = Reservation.objects.create(
            team=team,
            user=user,
            api_key=api_key,
            description=description[:255],
            estimate=estimate,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        if windows:
            # The through model directly: one INSERT instead of set()'s SELECT + INSERT.
            link = Reservation.windows.through
            link.objects.bulk_create([link(reservation_id=reservation.pk, budgetwindow_id=w.pk) for w in windows])
    return reservation


def _reserve_one_statement(*, team, estimate, user, api_key, description, ttl_s, price, now) -> Reservation:
    starts = {period: period_start(period, now) for period in BudgetPeriod.values}
    reservation = Reservation(
        team=team,
        user=user,
        api_key=api_key,
        description=description[:255],
        estimate=estimate,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    # A window missing for this period (its first request) is created, then the statement runs
    # again; a budget added meanwhile can need one more round, hence a few attempts.
    for _ in range(5):
        outcome = statements.reserve(
            reservation=reservation,
            team_id=team.pk,
            user_id=user.pk if user is not None else None,
            api_key_id=api_key.pk if api_key is not None else None,
            period_starts=starts,
            price=price,
            price_at=now,
        )
        if outcome.reservation is not None:
            return outcome.reservation
        if outcome.price_stale:
            raise PriceStale(price.model_name)
        if outcome.blocking is not None:
            budget = Budget.objects.select_related("team", "user", "api_key").get(pk=outcome.blocking.budget_id)
            budget.hard_limit = outcome.blocking_hard_limit  # the limit the statement checked against
            raise budget_exceeded_error(budget=budget, window=outcome.blocking, estimate=estimate)
        for budget in Budget.objects.filter(pk__in=outcome.missing_budget_ids):
            BudgetWindow.objects.get_or_create(budget=budget, period_start=period_start(budget.period, now))
    raise TryAgain("could not reserve budget: the budget windows kept changing; try again")


def reservation_settle(*, reservation: Reservation, actual: Decimal) -> Reservation:
    """Replace the hold by the actual cost. A hold that already expired (or was released) still books the spend.

    Idempotent: settling a settled reservation changes nothing. Joins the caller's transaction
    when there is one. PostgreSQL: one statement (``statements.settle``).
    """
    finished_at = timezone.now()
    if _on_postgresql():
        outcome = statements.settle(reservation_id=reservation.pk, actual=actual, finished_at=finished_at)
        if outcome.was is None:  # settled already (or gone): nothing booked
            return Reservation.objects.get(pk=reservation.pk)
        _soft_alerts_after_commit(_windows_due_alert(outcome.windows))
    else:
        with _budget_lock(), transaction.atomic(savepoint=False):
            # The conditional UPDATE claims the hold; a concurrent expiry or settle sees it gone.
            held = Reservation.objects.filter(pk=reservation.pk, status=ReservationStatus.HELD).update(
                status=ReservationStatus.SETTLED, actual=actual, finished_at=finished_at
            )
            if held:
                due = _windows_settle(reservation_id=reservation.pk, estimate=reservation.estimate, actual=actual)
            else:
                current = Reservation.objects.select_for_update().get(pk=reservation.pk)
                if current.status == ReservationStatus.SETTLED:
                    return current
                # Expired or released: the hold is gone already; book the spend only.
                BudgetWindow.objects.filter(reservations=current.pk).update(spent=F("spent") + actual)
                Reservation.objects.filter(pk=current.pk).update(
                    status=ReservationStatus.SETTLED, actual=actual, finished_at=finished_at
                )
                due = list(BudgetWindow.objects.filter(reservations=current.pk).values_list("pk", flat=True))
            _soft_alerts_after_commit(due)
    reservation.status = ReservationStatus.SETTLED
    reservation.actual = actual
    reservation.finished_at = finished_at
    return reservation


def _soft_alerts_after_commit(window_ids: list[int]) -> None:
    if window_ids:
        transaction.on_commit(lambda: budget_soft_alerts_send(window_ids=window_ids))


def _windows_due_alert(rows) -> list[int]:
    """The windows among ``(id, spent, soft_alert_sent_at, hard_limit, soft_limit_percent)`` due a soft alert."""
    due = []
    for window_id, spent, alert_sent_at, hard_limit, percent in rows:
        soft_limit = (Decimal(str(hard_limit)) * int(percent) / 100).quantize(Decimal("0.0000000001"))
        if alert_sent_at is None and Decimal(str(spent)) >= soft_limit:
            due.append(window_id)
    return due


def _windows_settle(*, reservation_id: int, estimate: Decimal, actual: Decimal) -> list[int]:
    """SQLite: move a held reservation from reserved to spent in one statement; return the windows due an alert.

    One UPDATE ... RETURNING (SQLite >= 3.35) instead of an UPDATE and a SELECT; the alert itself
    is then sent (and claimed, once per period) after commit.
    """
    window_table = BudgetWindow._meta.db_table
    budget_table = Budget._meta.db_table
    link_table = Reservation.windows.through._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {window_table} SET reserved = {window_table}.reserved - %s, spent = {window_table}.spent + %s "
            f"WHERE id IN (SELECT budgetwindow_id FROM {link_table} WHERE reservation_id = %s) "
            f"RETURNING id, spent, soft_alert_sent_at, "
            f"(SELECT hard_limit FROM {budget_table} WHERE {budget_table}.id = {window_table}.budget_id), "
            f"(SELECT soft_limit_percent FROM {budget_table} WHERE {budget_table}.id = {window_table}.budget_id)",
            [estimate, actual, reservation_id],
        )
        rows = cursor.fetchall()
    return _windows_due_alert(rows)


def _release(current: Reservation, status: str) -> None:
    BudgetWindow.objects.filter(reservations=current.pk).update(reserved=F("reserved") - current.estimate)
    current.status = status
    current.finished_at = timezone.now()
    current.save(update_fields=["status", "finished_at"])


def reservation_release(*, reservation: Reservation) -> Reservation:
    """The work failed before costing anything billable: give the hold back."""
    if _on_postgresql():
        finished_at = timezone.now()
        if statements.release(
            reservation_id=reservation.pk, status=ReservationStatus.RELEASED, finished_at=finished_at
        ):
            reservation.status = ReservationStatus.RELEASED
            reservation.finished_at = finished_at
            return reservation
        return Reservation.objects.get(pk=reservation.pk)
    with _budget_lock(), transaction.atomic():
        current = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if current.status == ReservationStatus.HELD:
            _release(current, ReservationStatus.RELEASED)
    return current


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the holds of workers that died (past their expiry). Returns how many."""
    now = now or timezone.now()
    expired = 0
    for reservation_id in Reservation.objects.filter(status=ReservationStatus.HELD, expires_at__lt=now).values_list(
        "pk", flat=True
    ):
        if _on_postgresql():
            # One statement each: still held and past its expiry when locked, or left alone.
            expired += statements.release(
                reservation_id=reservation_id,
                status=ReservationStatus.EXPIRED,
                finished_at=timezone.now(),
                expired_before=now,
            )
            continue
        with _budget_lock(), transaction.atomic():
            current = Reservation.objects.select_for_update().get(pk=reservation_id)
            if current.status == ReservationStatus.HELD and current.expires_at < now:
                _release(current, ReservationStatus.EXPIRED)
                expired += 1
    if expired:
        logger.warning("released %d expired budget reservations", expired)
    return expired


def _maybe_sweep_expired() -> None:
    # Without celery beat (the embedded default) expiry still happens, at most every 30 s.
    global _last_expiry_sweep
    if time.monotonic() - _last_expiry_sweep >= _EXPIRY_SWEEP_EVERY_S:
        _last_expiry_sweep = time.monotonic()
        reservations_expire()


def budget_soft_alerts_send(*, window_ids: list[int] | None = None, reservation_id: int | None = None) -> int:
    """E-mail the team's owners and admins once per period when spend passes a budget's soft limit.

    Checks the given windows (or those of a reservation); one query when no alert is due.
    """
    from apps.accounts.models import Membership, Role

    windows = BudgetWindow.objects.filter(soft_alert_sent_at=None)
    if reservation_id is not None:
        windows = windows.filter(reservations=reservation_id)
    else:
        windows = windows.filter(pk__in=window_ids or [])
    # spent >= hard_limit × percent / 100, compared in SQL so that no row comes back when none is due.
    windows = windows.filter(spent__gte=F("budget__hard_limit") * F("budget__soft_limit_percent") / 100)
    sent = 0
    for window in windows.select_related("budget", "budget__team", "budget__user", "budget__api_key"):
        budget = window.budget
        if window.spent < budget.soft_limit:
            continue
        # Claim the alert with a conditional update so concurrent settlements send it once.
        if not BudgetWindow.objects.filter(pk=window.pk, soft_alert_sent_at=None).update(
            soft_alert_sent_at=timezone.now()
        ):
            continue
        recipients = list(
            Membership.objects.filter(team=budget.team, role__in=[Role.OWNER, Role.ADMIN])
            .exclude(user__email="")
            .order_by("user__email")
            .values_list("user__email", flat=True)
        )
        if recipients:
            send_mail(
                subject=f"[Parsimony] {budget.soft_limit_percent}% of {_describe(budget)} used",
                message=(
                    f"{_describe(budget)} has spent ${window.spent:.4f} of its ${budget.hard_limit:.4f} limit "
                    f"this period (soft limit {budget.soft_limit_percent}%). Requests that would go over the "
                    f"limit will be refused with HTTP 402."
                ),
                from_email=None,
                recipient_list=recipients,
                fail_silently=True,
            )
        sent += 1
    return sent


def budget_save(
    *,
    team,
    hard_limit: Decimal,
    scope: str = BudgetScope.TEAM,
    period: str = BudgetPeriod.MONTH,
    soft_limit_percent: int = 80,
    user=None,
    api_key=None,
    budget: Budget | None = None,
    enabled: bool = True,
) -> Budget:
    if scope not in BudgetScope.values:
        raise ValidationFailed(f"unknown budget scope {scope!r} (valid: {', '.join(BudgetScope.values)})")
    if period not in BudgetPeriod.values:
        raise ValidationFailed(f"unknown budget period {period!r} (valid: {', '.join(BudgetPeriod.values)})")
    if hard_limit < 0 or not 1 <= soft_limit_percent <= 100:
        raise ValidationFailed("the hard limit must be >= 0 and the soft limit between 1 and 100 percent")
    if scope == BudgetScope.USER and user is None or scope == BudgetScope.API_KEY and api_key is None:
        raise ValidationFailed(f"a {scope} budget needs its {scope}")
    if api_key is not None and api_key.team_id != team.pk:
        raise ValidationFailed("that API key belongs to another team")
    budget = budget or Budget(team=team)
    budget.scope = scope
    budget.period = period
    budget.hard_limit = hard_limit
    budget.soft_limit_percent = soft_limit_percent
    budget.user = user if scope == BudgetScope.USER else None
    budget.api_key = api_key if scope == BudgetScope.API_KEY else None
    budget.enabled = enabled
    budget.save()
    return budget


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerContext:
    """Who a model call is billed to, and what it belonged to."""

    team: object
    user: object | None = None
    api_key: object | None = None
    query_run_id: int | None = None
    agent_run_id: int | None = None
    pipeline_name: str = ""


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
    with _budget_lock():  # SQLite: one writer at a time
        record.save(force_insert=True)
    return record


def _usage_record_build(
    *, context, stage, model_name, usage, price, latency_ms, finish_reason, endpoint, reservation
) -> UsageRecord:
    """The (unsaved) ledger row for ``usage`` charged at ``price``, with the prices copied onto it."""
    cost = cost_of(usage=usage, price=price) if price is not None else ZERO
    return UsageRecord(
        team=context.team,
        user=context.user if getattr(context.user, "pk", None) else None,
        api_key=context.api_key,
        query_run_id=context.query_run_id,
        agent_run_id=context.agent_run_id,
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
    if not _on_postgresql():
        with _budget_lock(), transaction.atomic():
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
        outcome = statements.settle(
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
            _soft_alerts_after_commit(_windows_due_alert(outcome.windows))
        return record
    raise TryAgain(f"the price of {model_name!r} kept changing while the call was being billed; try again")


def money_seconds(value) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.000001"))


__all__ = [
    "BudgetExceeded",
    "LedgerContext",
    "PriceMissing",
    "budget_reserve",
    "budget_save",
    "money",
    "price_current",
    "price_set",
    "reservation_release",
    "reservation_settle",
    "reservations_expire",
    "usage_record",
]
