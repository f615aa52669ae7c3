"""Reconciliation (a read): does the ledger agree with itself, the budgets and the runs?

``ledger_reconcile(since=None)`` returns every difference as data (the ``reconcile_ledger``
command prints them; CI, the daily beat task and the benchmark count them):

- ``row_cost``: a ledger row's cost recomputed from its tokens/seconds and its copied prices
  (``pricing.cost_of``) differs from its ``cost``;
- ``window_spent``: a budget window's ``spent`` is not its ``opening_spent`` plus the rows of its
  settled reservations; ``window_reserved``: its ``reserved`` is not the estimates of its held ones;
- ``hold_expired``: a reservation still held past its expiry;
- ``reservation_actual``: a settled reservation's ``actual`` is not the sum of its rows (every row
  counts: overage rows too); ``reservation_unbooked``: a released or expired one has rows (spend no
  budget booked);
- ``query_run_cost`` / ``agent_run_cost``: a finished run's ``cost`` is not the sum of its rows.

``since`` limits the check to rows, reservations and runs created from then on, and to the windows
of periods that end after it (a window is always checked whole).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.apps import apps as django_apps
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from apps.costs.models import ZERO, BudgetWindow, Reservation, ReservationStatus, UsageRecord
from apps.costs.money_format import money_str
from apps.costs.pricing import PriceSnapshot, Usage, cost_of
from apps.costs.services.backend import on_postgresql
from apps.costs.services.budgets import period_end


@dataclass(frozen=True)
class Difference:
    """One disagreement: what was checked (``kind``, ``model`` #``pk``), what was expected and what is recorded."""

    kind: str
    model: str
    pk: int
    expected: Decimal
    recorded: Decimal
    detail: str = ""

    def __str__(self) -> str:
        text = (
            f"{self.kind}: {self.model} #{self.pk}: expected {money_str(self.expected)}, "
            f"recorded {money_str(self.recorded)}"
        )
        return f"{text} ({self.detail})" if self.detail else text


def ledger_reconcile(since: datetime | None = None, now: datetime | None = None) -> list[Difference]:
    """Every difference between the ledger, the budget windows, the reservations and the runs (none: []).

    On PostgreSQL every query reads one snapshot (a read-only repeatable-read transaction), so a
    reconciliation while requests settle never sees a row without its window's spend.
    """
    snapshot = on_postgresql() and not connection.in_atomic_block
    with transaction.atomic():
        if snapshot:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        now = now or timezone.now()
        return [
            *_row_costs(since),
            *_windows(since),
            *_reservations(since, now),
            *_runs("rag", "QueryRun", "query_run_id", "query_run_cost", since),
            *_runs("agents", "AgentRun", "agent_run_id", "agent_run_cost", since),
        ]


def _since(queryset, since: datetime | None, field: str = "created_at"):
    return queryset.filter(**{f"{field}__gte": since}) if since is not None else queryset


def _row_costs(since: datetime | None) -> Iterable[Difference]:
    fields = (
        "pk", "cost", "prompt_tokens", "completion_tokens", "cached_tokens", "gpu_seconds", "cpu_seconds",
        "price_input_per_mtok", "price_output_per_mtok", "price_cached_input_per_mtok",
        "price_per_gpu_second", "price_per_cpu_second",
    )
    for row in _since(UsageRecord.objects.order_by("pk"), since).values_list(*fields).iterator(chunk_size=2000):
        pk, cost, prompt, completion, cached, gpu, cpu, p_in, p_out, p_cached, p_gpu, p_cpu = row
        try:
            usage = Usage(prompt, completion, cached, gpu, cpu)
        except ValueError as error:
            yield Difference("row_cost", "UsageRecord", pk, ZERO, cost, str(error))
            continue
        expected = cost_of(usage=usage, price=PriceSnapshot(p_in, p_out, p_cached, p_gpu, p_cpu))
        if expected != cost:
            yield Difference("row_cost", "UsageRecord", pk, expected, cost, "tokens/seconds x copied prices")


def _windows(since: datetime | None) -> Iterable[Difference]:
    windows = list(BudgetWindow.objects.select_related("budget").order_by("pk"))
    if since is not None:
        windows = [
            window for window in windows
            if (end := period_end(window.budget.period, window.period_start)) is None or end > since
        ]
    ids = [window.pk for window in windows]
    settled = dict(
        UsageRecord.objects.filter(reservation__status=ReservationStatus.SETTLED, reservation__windows__in=ids)
        .values_list("reservation__windows")
        .annotate(total=Sum("cost"))
    )
    held = dict(
        Reservation.objects.filter(status=ReservationStatus.HELD, windows__in=ids)
        .values_list("windows")
        .annotate(total=Sum("estimate"))
    )
    for window in windows:
        spent = window.opening_spent + settled.get(window.pk, ZERO)
        if spent != window.spent:
            yield Difference(
                "window_spent", "BudgetWindow", window.pk, spent, window.spent,
                f"budget #{window.budget_id} from {window.period_start:%Y-%m-%d}: opening "
                f"{money_str(window.opening_spent)} + settled rows",
            )
        reserved = held.get(window.pk, ZERO)
        if reserved != window.reserved:
            yield Difference(
                "window_reserved", "BudgetWindow", window.pk, reserved, window.reserved,
                f"budget #{window.budget_id} from {window.period_start:%Y-%m-%d}: estimates of held reservations",
            )


def _reservations(since: datetime | None, now: datetime) -> Iterable[Difference]:
    reservations = _since(Reservation.objects.order_by("pk"), since).annotate(
        rows_cost=Sum("usagerecord__cost"), rows=Count("usagerecord")
    )
    for pk, status, estimate, actual, expires_at, rows_cost, rows in reservations.values_list(
        "pk", "status", "estimate", "actual", "expires_at", "rows_cost", "rows"
    ).iterator(chunk_size=2000):
        rows_cost = rows_cost or ZERO
        if status == ReservationStatus.HELD and expires_at < now:
            yield Difference(
                "hold_expired", "Reservation", pk, ZERO, estimate, f"still held {now - expires_at} past its expiry"
            )
        elif status == ReservationStatus.SETTLED and actual != rows_cost:
            yield Difference("reservation_actual", "Reservation", pk, rows_cost, actual or ZERO, f"{rows} rows")
        elif status in (ReservationStatus.RELEASED, ReservationStatus.EXPIRED) and rows:
            yield Difference(
                "reservation_unbooked", "Reservation", pk, rows_cost, ZERO,
                f"{status} with {rows} ledger rows that no budget booked",
            )


def _runs(app: str, model_name: str, ledger_field: str, kind: str, since: datetime | None) -> Iterable[Difference]:
    # Looked up by name: apps.rag and apps.agents import apps.costs, never the reverse.
    model = django_apps.get_model(app, model_name)
    finished = _since(model.objects.filter(status__in=["succeeded", "failed"]), since)
    sums = dict(
        _since(UsageRecord.objects.filter(**{f"{ledger_field}__isnull": False}), since)
        .values_list(ledger_field)
        .annotate(total=Sum("cost"))
    )
    for pk, cost in finished.order_by("pk").values_list("pk", "cost").iterator(chunk_size=2000):
        rows_cost = sums.get(pk, ZERO)
        if rows_cost != cost:
            yield Difference(kind, model_name, pk, rows_cost, cost, "sum of its ledger rows")


__all__ = ["Difference", "ledger_reconcile"]
