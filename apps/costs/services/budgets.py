"""Writes for budgets and their reservations: hold the worst case before work runs, settle or release after.

``budget_reserve`` holds the worst-case cost against every budget that applies, atomically (row
locks on PostgreSQL, a process lock on SQLite), and refuses with 402 if any would go over.
``reservation_settle`` swaps the hold for the actual cost; ``reservation_release`` drops it on
failure; expired holds (dead workers) are released by ``reservations_expire``.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from apps.core.errors import ServiceError, ValidationFailed
from apps.costs import postgres_hot_path
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
from apps.costs.money_format import money_str
from apps.costs.services.alerts import budget_describe, soft_alerts_after_commit, windows_due_alert
from apps.costs.services.backend import TryAgain, budget_lock, on_postgresql
from apps.costs.services.prices import PriceStale

logger = logging.getLogger(__name__)

RESERVATION_TTL_S = 900
_EXPIRY_SWEEP_EVERY_S = 30.0
_last_expiry_sweep = 0.0


class BudgetExceeded(ServiceError):
    code = "budget_exceeded"
    http_status = 402


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


def period_end(period: str, start: datetime) -> datetime | None:
    """The start of the period after the one that starts at ``start`` (None: the total period never ends)."""
    if period == BudgetPeriod.TOTAL:
        return None
    # Past the end of the period by less than a period (DST days are 23-25 h, months 28-31 days).
    ahead = {BudgetPeriod.DAY: timedelta(hours=36), BudgetPeriod.WEEK: timedelta(days=7, hours=12)}
    return period_start(period, start + ahead.get(period, timedelta(days=32)))


def budget_ledger_spend(*, budget: Budget, start: datetime) -> Decimal:
    """What the ledger holds for ``budget``'s scope (team, user or API key) in the period from ``start``."""
    rows = UsageRecord.objects.filter(team_id=budget.team_id, created_at__gte=start)
    end = period_end(budget.period, start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if budget.scope == BudgetScope.USER:
        rows = rows.filter(user_id=budget.user_id)
    elif budget.scope == BudgetScope.API_KEY:
        rows = rows.filter(api_key_id=budget.api_key_id)
    return rows.total_cost()


def window_get_or_create(*, budget: Budget, start: datetime) -> BudgetWindow:
    """``budget``'s window for the period from ``start``; a new one opens at the ledger's spend in that period.

    A budget created mid-period thus starts from what its scope already spent, not from $0; the
    amount is kept as ``opening_spent`` (part of ``spent``) for reconciliation.
    """
    window = BudgetWindow.objects.filter(budget=budget, period_start=start).first()
    if window is not None:
        return window
    opening = budget_ledger_spend(budget=budget, start=start)
    window, _ = BudgetWindow.objects.get_or_create(
        budget=budget, period_start=start, defaults={"spent": opening, "opening_spent": opening}
    )
    return window


def budget_window(*, budget: Budget, at: datetime | None = None) -> BudgetWindow:
    return window_get_or_create(budget=budget, start=period_start(budget.period, at or timezone.now()))


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
                window_get_or_create(budget=budget, start=starts[budget.pk])
        windows = list(locked.all())
    return windows


def budget_exceeded_error(*, budget: Budget, window: BudgetWindow, estimate: Decimal) -> BudgetExceeded:
    """The 402 for a request that does not fit: names the budget, its limit, spent, reserved, estimate, overage."""
    over_by = window.spent + window.reserved + estimate - budget.hard_limit
    return BudgetExceeded(
        f"{budget_describe(budget)} would be exceeded: limit ${budget.hard_limit:.6f}, spent "
        f"${window.spent:.6f}, reserved ${window.reserved:.6f}, this request needs up to "
        f"${estimate:.6f} (over by ${over_by:.6f})",
        detail={
            "budget_id": budget.pk,
            "budget": budget_describe(budget),
            "scope": budget.scope,
            "period": budget.period,
            "period_start": window.period_start.isoformat(),
            "limit": money_str(budget.hard_limit),
            "spent": money_str(window.spent),
            "reserved": money_str(window.reserved),
            "estimate": money_str(estimate),
            "over_by": money_str(over_by),
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

    PostgreSQL: one statement (``postgres_hot_path.reserve``): the applicable budgets, their windows
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
    if on_postgresql():
        return _reserve_one_statement(
            team=team, estimate=estimate, user=user, api_key=api_key, description=description,
            ttl_s=ttl_s, price=price, now=now,
        )
    with budget_lock(), transaction.atomic():
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
        outcome = postgres_hot_path.reserve(
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
            window_get_or_create(budget=budget, start=period_start(budget.period, now))
    raise TryAgain("could not reserve budget: the budget windows kept changing; try again")


def reservation_extend(*, reservation: Reservation, amount: Decimal) -> Reservation:
    """Grow a held reservation by ``amount`` on the windows it holds, or raise BudgetExceeded naming the
    first that would go over (nothing changed then).

    A hold covers what its work has spent plus the bound of the step about to run (docs/costs.md,
    "Holds grow with the work"); each step extends it here before it starts. Locks as settlement does
    (the reservation, then its windows in primary-key order), so the two cannot deadlock. The
    ``reservation`` object is updated in place (its estimate) and returned.
    """
    if amount < 0:
        raise ValidationFailed("a hold cannot be extended by a negative amount")
    if amount == 0:
        return reservation
    lock = nullcontext() if on_postgresql() else budget_lock()
    with lock, transaction.atomic():
        current = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if current.status != ReservationStatus.HELD:
            raise ValidationFailed(f"reservation #{current.pk} is {current.status}, not held: it cannot grow")
        windows = list(
            BudgetWindow.objects.select_for_update()
            .filter(reservations=current.pk)
            .order_by("pk")
            .select_related("budget")
        )
        for window in windows:
            budget = window.budget
            if budget.enabled and window.spent + window.reserved + amount > budget.hard_limit:
                raise budget_exceeded_error(budget=budget, window=window, estimate=amount)
        if windows:
            BudgetWindow.objects.filter(pk__in=[w.pk for w in windows]).update(reserved=F("reserved") + amount)
        Reservation.objects.filter(pk=current.pk).update(estimate=F("estimate") + amount)
    reservation.estimate = current.estimate + amount
    reservation.status = current.status
    return reservation


def reservation_shrink(*, reservation: Reservation, to: Decimal) -> Reservation:
    """Give back the part of a held reservation above ``to`` (never below what it holds already spent: the
    caller passes spent + the bound of the work still to run), on the windows it holds. A bulk job's hold
    shrinks this way as its rows settle (``apps.bulk.services``). Nothing changes when ``to`` is not
    lower, or the reservation is no longer held."""
    lock = nullcontext() if on_postgresql() else budget_lock()
    with lock, transaction.atomic():
        current = Reservation.objects.select_for_update().get(pk=reservation.pk)
        give_back = current.estimate - max(to, ZERO)
        if current.status != ReservationStatus.HELD or give_back <= 0:
            return current
        windows = list(BudgetWindow.objects.select_for_update().filter(reservations=current.pk).order_by("pk"))
        if windows:
            BudgetWindow.objects.filter(pk__in=[w.pk for w in windows]).update(
                reserved=Greatest(F("reserved") - give_back, Value(ZERO))
            )
        Reservation.objects.filter(pk=current.pk).update(estimate=F("estimate") - give_back)
    reservation.estimate = current.estimate - give_back
    return reservation


def reservation_settle(*, reservation: Reservation, actual: Decimal) -> Reservation:
    """Replace the hold by the actual cost. A hold that already expired (or was released) still books the spend.

    Idempotent: settling a settled reservation changes nothing. Joins the caller's transaction
    when there is one. PostgreSQL: one statement (``postgres_hot_path.settle``).
    """
    finished_at = timezone.now()
    if on_postgresql():
        outcome = postgres_hot_path.settle(reservation_id=reservation.pk, actual=actual, finished_at=finished_at)
        if outcome.was is None:  # settled already (or gone): nothing booked
            return Reservation.objects.get(pk=reservation.pk)
        soft_alerts_after_commit(windows_due_alert(outcome.windows))
    else:
        with budget_lock(), transaction.atomic(savepoint=False):
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
            soft_alerts_after_commit(due)
    reservation.status = ReservationStatus.SETTLED
    reservation.actual = actual
    reservation.finished_at = finished_at
    return reservation


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
    return windows_due_alert(rows)


def _release(current: Reservation, status: str) -> None:
    BudgetWindow.objects.filter(reservations=current.pk).update(reserved=F("reserved") - current.estimate)
    current.status = status
    current.finished_at = timezone.now()
    current.save(update_fields=["status", "finished_at"])


def reservation_close(*, reservation: Reservation, actual: Decimal) -> Reservation:
    """The work ended (finished, failed or answered otherwise): settle the hold to ``actual``, what its
    ledger rows cost, or give it back whole when nothing was billed."""
    if actual > 0:
        return reservation_settle(reservation=reservation, actual=actual)
    return reservation_release(reservation=reservation)


def reservation_release(*, reservation: Reservation) -> Reservation:
    """The work failed before costing anything billable: give the hold back."""
    if on_postgresql():
        finished_at = timezone.now()
        if postgres_hot_path.release(
            reservation_id=reservation.pk, status=ReservationStatus.RELEASED, finished_at=finished_at
        ):
            reservation.status = ReservationStatus.RELEASED
            reservation.finished_at = finished_at
            return reservation
        return Reservation.objects.get(pk=reservation.pk)
    with budget_lock(), transaction.atomic():
        current = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if current.status == ReservationStatus.HELD:
            _release(current, ReservationStatus.RELEASED)
    return current


def reservation_true_up(*, reservation: Reservation) -> Decimal:
    """Book the ledger rows written under a hold after it ended: its ``actual`` becomes its rows' sum and its
    budget windows' spend grows by the difference; returns that difference.

    For spending that is known only after the work's hold was settled: a provider batch cancelled with the
    job answers the requests it had finished, and the provider charges for them (apps/bulk/provider_batch.py).
    Never refused, whatever the budget stands at: the money is spent already (a window it takes past its
    hard limit shows the overrun, as an overage row does). A hold still held books nothing here: its own
    settlement sums its rows. Joins the caller's transaction, so the rows and their booking commit together.
    """
    with budget_lock(), transaction.atomic():
        current = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if current.status == ReservationStatus.HELD:
            return ZERO
        total = UsageRecord.objects.filter(reservation_id=current.pk).total_cost()
        booked = (current.actual or ZERO) if current.status == ReservationStatus.SETTLED else ZERO
        late = total - booked
        if late <= 0:
            return ZERO
        BudgetWindow.objects.filter(reservations=current.pk).update(spent=F("spent") + late)
        Reservation.objects.filter(pk=current.pk).update(
            status=ReservationStatus.SETTLED, actual=total, finished_at=current.finished_at or timezone.now())
        soft_alerts_after_commit(windows_due_alert(
            BudgetWindow.objects.filter(reservations=current.pk).values_list(
                "pk", "spent", "soft_alert_sent_at", "budget__hard_limit", "budget__soft_limit_percent")))
    reservation.status, reservation.actual = ReservationStatus.SETTLED, total
    return late


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the holds of workers that died (past their expiry). Returns how many."""
    now = now or timezone.now()
    expired = 0
    for reservation_id in Reservation.objects.filter(status=ReservationStatus.HELD, expires_at__lt=now).values_list(
        "pk", flat=True
    ):
        if on_postgresql():
            # One statement each: still held and past its expiry when locked, or left alone.
            expired += postgres_hot_path.release(
                reservation_id=reservation_id,
                status=ReservationStatus.EXPIRED,
                finished_at=timezone.now(),
                expired_before=now,
            )
            continue
        with budget_lock(), transaction.atomic():
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
