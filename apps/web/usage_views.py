"""Usage dashboard: spend per day, breakdowns, savings, budgets, the ledger as CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from apps.accounts import selectors as account_selectors
from apps.accounts.models import Role
from apps.answer_cache import selectors as cache_selectors
from apps.core.errors import ServiceError
from apps.core.scoping import team_object_or_404
from apps.costs import selectors as cost_selectors
from apps.costs import services as cost_services
from apps.costs.admin import ledger_csv_response
from apps.costs.models import Budget
from apps.rag import selectors as rag_selectors
from apps.web import selectors as web_selectors
from apps.web.access import can, team_view
from apps.web.forms import BudgetForm

PERIODS = (7, 30, 90)
BREAKDOWNS = (
    # field, title, column, the label of rows without a value
    ("model_name", "By model", "Model", "—"),
    ("user", "By user", "User", "(no user: API keys, system)"),
    ("api_key", "By API key", "API key", "(no key: browser, system)"),
    ("pipeline_name", "By pipeline", "Pipeline", "(none: uploads, direct calls)"),
    ("stage", "By stage", "Stage", "—"),
    ("quality_label", "By answer quality", "Quality", "(not assessed: uploads, direct calls, agents)"),
)
QUALITY_CHOICES = (
    ("grounded", "grounded"), ("weak", "weak"), ("unsupported", "unsupported"), ("degenerate", "degenerate"),
    ("abstained", "abstained"), ("none", "not assessed"),
)


def _quality(request) -> str | None:
    """The ?quality= filter: a label, "none" (not assessed), or None (every row)."""
    value = request.GET.get("quality", "")
    return value if value in dict(QUALITY_CHOICES) else None


def _days(request) -> int:
    try:
        days = int(request.GET.get("days", 30))
    except ValueError:
        days = 30
    return days if days in PERIODS else 30


@team_view()
def usage(request: HttpRequest) -> HttpResponse:
    days = _days(request)
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    quality = _quality(request)
    records = cost_selectors.usage_list(team=request.team, since=since)
    if quality:
        records = rag_selectors.ledger_of_quality(records, quality)
    labelled = rag_selectors.ledger_with_quality_label(records)
    per_day = cost_selectors.spend_per_day(team=request.team, days=days, today=today)
    breakdowns = [
        (field, title, column, empty,
         cost_selectors.usage_by(records=labelled if field == "quality_label" else records, field=field))
        for field, title, column, empty in BREAKDOWNS
    ]
    total = sum((cost for _, cost in per_day), start=0)
    if quality:  # the filtered rows' total (the per-day chart stays the team's)
        total = sum((row["cost"] for row in cost_selectors.usage_by(records=records, field="stage")), start=0)
    context = {
        "quality": quality or "",
        "quality_choices": QUALITY_CHOICES,
        "days": days,
        "periods": PERIODS,
        "per_day": per_day,
        "chart": {"labels": [d.isoformat() for d, _ in per_day], "values": [float(c) for _, c in per_day]},
        "total": total,
        "calls": records.count(),
        "breakdowns": breakdowns,
        "savings": rag_selectors.savings_by(team=request.team, since=since, field="pipeline"),
        "savings_totals": web_selectors.savings_totals(team=request.team, since=since),
        "savings_accuracy": [
            {"pipeline": pipeline, **row,
             "error_percent": None if row["error"] is None else round(100 * row["error"], 1)}
            for pipeline, row in rag_selectors.savings_accuracy(team=request.team, since=since).items()
        ],
        "budgets": cost_selectors.team_budget_statuses(team=request.team),
        "answer_cache": cache_selectors.cache_metrics(team=request.team, since=since),
        "manage": can(request, Role.ADMIN),
    }
    return render(request, "web/usage.html", context)


@team_view()
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The team's ledger as CSV (the period on the page, or everything with ?days=all; ?quality= keeps the
    rows of query runs with that answer quality), with each row's quality label."""
    since = None
    if request.GET.get("days") != "all":
        days = _days(request)
        first = timezone.now().date() - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    records = cost_selectors.usage_list(team=request.team, since=since)
    quality = _quality(request)
    if quality:
        records = rag_selectors.ledger_of_quality(records, quality)
    records = rag_selectors.ledger_with_quality_label(records).order_by("created_at", "id")
    return ledger_csv_response(records, filename=f"{request.team.slug}-ledger.csv")


def _budget_form(request, data=None, initial=None) -> BudgetForm:
    return BudgetForm(
        data,
        initial=initial,
        members=account_selectors.team_members(team=request.team),
        api_keys=account_selectors.team_api_keys(team=request.team).filter(revoked_at=None),
    )


def _budget_edit(request: HttpRequest, budget: Budget | None) -> HttpResponse:
    status = 200
    if request.method == "POST":
        form = _budget_form(request, request.POST)
        if form.is_valid():
            data = form.cleaned_data
            user = api_key = None
            if data.get("user"):
                membership = account_selectors.team_members(team=request.team).filter(user_id=data["user"]).first()
                user = membership.user if membership else None
            if data.get("api_key"):
                api_key = account_selectors.team_api_keys(team=request.team).filter(pk=data["api_key"]).first()
            try:
                cost_services.budget_save(
                    team=request.team,
                    budget=budget,
                    scope=data["scope"],
                    period=data["period"],
                    hard_limit=data["hard_limit"],
                    soft_limit_percent=data["soft_limit_percent"],
                    enabled=data["enabled"],
                    user=user,
                    api_key=api_key,
                )
            except ServiceError as exc:
                form.add_error(None, exc.message)
                status = exc.http_status
            else:
                messages.success(request, "Budget saved.")
                return redirect("usage")
        else:
            status = 400
    else:
        initial = {"scope": "team", "period": "month", "soft_limit_percent": 80, "enabled": True}
        if budget is not None:
            initial = {
                "scope": budget.scope,
                "period": budget.period,
                "hard_limit": budget.hard_limit.normalize(),
                "soft_limit_percent": budget.soft_limit_percent,
                "enabled": budget.enabled,
                "user": str(budget.user_id or ""),
                "api_key": str(budget.api_key_id or ""),
            }
        form = _budget_form(request, initial=initial)
    return render(request, "web/budget_form.html", {"form": form, "budget": budget}, status=status)


@team_view(Role.ADMIN)
def budget_create(request: HttpRequest) -> HttpResponse:
    return _budget_edit(request, None)


@team_view(Role.ADMIN)
def budget_edit(request: HttpRequest, budget_id: int) -> HttpResponse:
    return _budget_edit(request, team_object_or_404(Budget, request.team, pk=budget_id))
