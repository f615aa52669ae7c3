"""Reads: budget status (for banners, progress bars, the 402 body) and usage aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, DecimalField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDay
from django.utils import timezone

from apps.core.scoping import team_scoped
from apps.costs.models import ZERO, Budget, BudgetScope, BudgetWindow, Stage, UsageRecord
from apps.costs.services.budgets import budget_ledger_spend, period_end, period_start


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    spent: Decimal
    reserved: Decimal
    # Of ``spent``: what remote endpoints billed beyond their calls' bounds (``overage`` rows); only
    # these can take spent past the hard limit.
    overage: Decimal = ZERO

    @property
    def used_percent(self) -> float:
        if not self.budget.hard_limit:
            return 100.0
        return float(min(Decimal(100), 100 * (self.spent + self.reserved) / self.budget.hard_limit))

    @property
    def over_soft_limit(self) -> bool:
        return self.spent >= self.budget.soft_limit

    @property
    def remaining(self) -> Decimal:
        return max(ZERO, self.budget.hard_limit - self.spent - self.reserved)


def query_run_cost(run_id: int) -> Decimal:
    """What a query run's ledger rows cost together (0 for none). A hold's: ``hold_billed``
    (apps.costs.services.ledger)."""
    return UsageRecord.objects.filter(query_run_id=run_id).total_cost()


def budget_status(*, budget: Budget, at: datetime | None = None) -> BudgetStatus:
    start = period_start(budget.period, at or timezone.now())
    window = budget.windows.filter(period_start=start).first()
    return BudgetStatus(
        budget=budget,
        period_start=start,
        # No window yet (a budget created mid-period, before its first request): the one it will
        # open with, the ledger's spend in the period.
        spent=window.spent if window else budget_ledger_spend(budget=budget, start=start),
        reserved=window.reserved if window else ZERO,
        overage=budget_window_overage(window=window) if window else ZERO,
    )


def budget_window_overage(*, window: BudgetWindow) -> Decimal:
    """The overage booked in a budget window: the ``overage`` ledger rows under its reservations."""
    total = UsageRecord.objects.filter(stage=Stage.OVERAGE, reservation__windows=window).aggregate(
        total=Sum("cost")
    )["total"]
    return total or ZERO


def team_budget_statuses(*, team, at: datetime | None = None) -> list[BudgetStatus]:
    """``budget_status`` of each of the team's budgets, in four queries however many budgets there are
    (the budget list and the usage page show them all): the budgets, their current windows, the windows'
    overage, and the ledger's spend of the budgets that have no window yet (one conditional sum each)."""
    at = at or timezone.now()
    budgets = list(team_scoped(Budget, team).select_related("team", "user", "api_key"))
    if not budgets:
        return []
    starts = {budget.pk: period_start(budget.period, at) for budget in budgets}
    windows = {
        (window.budget_id, window.period_start): window
        for window in BudgetWindow.objects.filter(budget__in=budgets, period_start__in=set(starts.values()))
    }
    window_of = {budget.pk: windows.get((budget.pk, starts[budget.pk])) for budget in budgets}
    open_windows = [window.pk for window in window_of.values() if window is not None]
    overage = dict(
        UsageRecord.objects.filter(stage=Stage.OVERAGE, reservation__windows__in=open_windows)
        .values_list("reservation__windows")
        .annotate(total=Sum("cost"))
        .order_by()
    ) if open_windows else {}
    spend: dict[str, Decimal | None] = {}
    windowless = [budget for budget in budgets if window_of[budget.pk] is None]
    if windowless:
        sums = {f"b{budget.pk}": Sum("cost", filter=_ledger_scope(budget, starts[budget.pk])) for budget in windowless}
        spend = UsageRecord.objects.filter(team_id=team.pk, created_at__gte=min(starts.values())).aggregate(**sums)
    statuses = []
    for budget in budgets:
        window = window_of[budget.pk]
        statuses.append(
            BudgetStatus(
                budget=budget,
                period_start=starts[budget.pk],
                spent=window.spent if window else (spend.get(f"b{budget.pk}") or Decimal(0)),
                reserved=window.reserved if window else ZERO,
                overage=(overage.get(window.pk) or ZERO) if window else ZERO,
            )
        )
    return statuses


def _ledger_scope(budget: Budget, start: datetime) -> Q:
    """The ledger rows ``budget_ledger_spend`` sums, as a filter (for one conditional sum per budget)."""
    scope = Q(created_at__gte=start)
    end = period_end(budget.period, start)
    if end is not None:
        scope &= Q(created_at__lt=end)
    if budget.scope == BudgetScope.USER:
        scope &= Q(user_id=budget.user_id)
    elif budget.scope == BudgetScope.API_KEY:
        scope &= Q(api_key_id=budget.api_key_id)
    return scope


def team_budget_alerts(*, team) -> list[BudgetStatus]:
    return [status for status in team_budget_statuses(team=team) if status.budget.enabled and status.over_soft_limit]


def usage_list(*, team, since: datetime | None = None, until: datetime | None = None) -> QuerySet[UsageRecord]:
    records = team_scoped(UsageRecord, team)
    if since:
        records = records.filter(created_at__gte=since)
    if until:
        records = records.filter(created_at__lt=until)
    return records


MONEY_SUM = Coalesce(Sum("cost"), Value(ZERO), output_field=DecimalField(max_digits=24, decimal_places=10))


def usage_by(*, records: QuerySet[UsageRecord], field: str) -> list[dict]:
    """Totals grouped by one field: day, model_name, user, api_key, pipeline_name or stage (or a field the
    caller annotated, e.g. ``apps.rag.selectors.ledger_with_quality_label``'s quality_label)."""
    if field == "day":
        records = records.annotate(day=TruncDay("created_at"))
    group = {"user": "user__username", "api_key": "api_key__name"}.get(field, field)
    rows = (
        records.values(group)
        .annotate(
            cost=MONEY_SUM,
            calls=Count("id"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            cached_tokens=Coalesce(Sum("cached_tokens"), 0),
        )
        .order_by(group)
    )
    return [{"key": row.pop(group), **row} for row in rows]


def spend_per_day(*, team, days: int = 30, today: date | None = None) -> list[tuple[date, Decimal]]:
    """Spend per calendar day (UTC) for the last ``days`` days, zero-filled, oldest first."""
    today = today or timezone.now().date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    totals = {
        row["key"].date() if hasattr(row["key"], "date") else row["key"]: row["cost"]
        for row in usage_by(records=usage_list(team=team, since=start), field="day")
    }
    return [(first + timedelta(days=i), totals.get(first + timedelta(days=i), ZERO)) for i in range(days)]


# --------------------------------------------------------------------------- model endpoints and the price book


def endpoint_list(*, team) -> QuerySet:
    """The endpoints a team can use: its own and the global ones (``team=None``), its own first."""
    from apps.costs.models import ModelEndpoint

    return ModelEndpoint.objects.filter(Q(team=team) | Q(team=None)).order_by("team_id", "name")


def endpoint_get(*, team, endpoint_id: int, own: bool = False):
    """One endpoint the team can see (``own``: only its own, i.e. one it may change), else 404."""
    from django.http import Http404

    from apps.costs.models import ModelEndpoint

    endpoints = ModelEndpoint.objects.filter(team=team) if own else endpoint_list(team=team)
    endpoint = endpoints.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise Http404(f"no model endpoint {endpoint_id} in this team")
    return endpoint


def price_in_force(*, model_name: str):
    """The price row in force now for ``model_name``, or None."""
    from apps.costs.models import Price

    return (
        Price.objects.filter(model_name=model_name, effective_from__lte=timezone.now())
        .order_by("-effective_from")
        .first()
    )


def price_book_search(*, team, query: str = "", limit: int = 20) -> list:
    """Price rows in force whose model name contains ``query`` (shortest names first: ``gpt-4o`` before
    ``azure/gpt-4o-2024-08-06``), other teams' own prices left out."""
    from apps.costs.models import Price

    names = Price.objects.filter(effective_from__lte=timezone.now())
    if query:
        names = names.filter(model_name__icontains=query.strip())
    names = names.exclude(Q(model_name__startswith="team-") & ~Q(model_name__startswith=f"team-{team.pk}/"))
    chosen = sorted(set(names.values_list("model_name", flat=True)), key=lambda n: (len(n), n))[:limit]
    return [price for price in (price_in_force(model_name=name) for name in chosen) if price is not None]
