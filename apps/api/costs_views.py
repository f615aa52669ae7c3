"""REST: usage (spend and tokens grouped, with savings) and budgets. One view per operation, thin."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey, Membership
from apps.api.serializers import MoneyField, StrictCharField, StrictIntegerField, list_of
from apps.core.errors import ValidationFailed
from apps.core.scoping import team_object_or_404, team_scoped
from apps.costs import selectors as cost_selectors
from apps.costs import services as cost_services
from apps.costs.models import Budget, BudgetPeriod, BudgetScope
from apps.costs.money_format import money_str
from apps.rag import selectors as rag_selectors

# --------------------------------------------------------------------------- usage


GROUPS = {
    "day": "day",
    "model": "model_name",
    "user": "user",
    "api_key": "api_key",
    "pipeline": "pipeline_name",
    "stage": "stage",
}


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value) or (parse_datetime(value + "T00:00:00Z") if len(value) == 10 else None)
    if parsed is None:
        raise ValidationFailed(f"{name} must be an ISO date or datetime", detail={"fields": {name: value}})
    return parsed


class UsageView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=list(GROUPS), description="How to group the totals"),
            OpenApiParameter("since", str, description="ISO date/datetime (inclusive)"),
            OpenApiParameter("until", str, description="ISO date/datetime (exclusive)"),
        ],
        responses={200: OpenApiTypes.OBJECT},
        summary="Spend and tokens grouped by day, model, user, API key, pipeline or stage, with savings "
        "(and, per pipeline, the claimed baseline against the measured one where shadow runs measured it)",
    )
    def get(self, request):
        group = request.query_params.get("group_by", "day")
        if group not in GROUPS:
            raise ValidationFailed(f"unknown group_by {group!r} (valid: {', '.join(GROUPS)})")
        since = _parse_time(request.query_params.get("since"), "since")
        until = _parse_time(request.query_params.get("until"), "until")
        records = cost_selectors.usage_list(team=request.team, since=since, until=until)
        rows = cost_selectors.usage_by(records=records, field=GROUPS[group])
        total = sum((row["cost"] for row in rows), Decimal(0))
        savings_field = {"pipeline": "pipeline", "user": "user", "api_key": "api_key"}.get(group)
        savings = rag_selectors.savings_by(
            team=request.team, since=since, until=until, field=savings_field or "pipeline"
        )
        return Response(
            {
                "group_by": group,
                "total_cost": money_str(total),
                "rows": [
                    {
                        **row,
                        "key": str(row["key"]) if row["key"] is not None else None,
                        "cost": money_str(row["cost"]),
                    }
                    for row in rows
                ],
                "savings": [
                    {
                        **row,
                        "key": row["key"],
                        "cost": money_str(row["cost"] or 0),
                        "baseline_cost": money_str(row["baseline_cost"] or 0),
                        "savings": money_str(row["savings"] or 0),
                    }
                    for row in savings
                ],
                "savings_accuracy": [
                    _accuracy_json(pipeline, row)
                    for pipeline, row in rag_selectors.savings_accuracy(team=request.team, since=since).items()
                ],
            }
        )


def _accuracy_json(pipeline: str, row: dict) -> dict:
    """One pipeline's claimed vs measured baseline (runs with a shadow baseline only)."""
    return {
        "pipeline": pipeline,
        "runs": row["runs"],
        "claimed_baseline_cost": str(row["claimed_baseline_usd"]),
        "measured_baseline_cost": str(row["measured_baseline_usd"]),
        "error": row["error"],
    }


class BudgetOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="budget.pk")
    scope = serializers.CharField(source="budget.scope")
    user = serializers.CharField(source="budget.user.username", allow_null=True, default=None)
    api_key = serializers.IntegerField(source="budget.api_key_id", allow_null=True)
    period = serializers.CharField(source="budget.period")
    hard_limit = MoneyField(source="budget.hard_limit")
    soft_limit_percent = serializers.IntegerField(source="budget.soft_limit_percent")
    enabled = serializers.BooleanField(source="budget.enabled")
    period_start = serializers.DateTimeField()
    spent = MoneyField()
    reserved = MoneyField()
    overage = MoneyField(help_text="of spent: billed by remote endpoints beyond their calls' bounds")
    remaining = MoneyField()
    used_percent = serializers.FloatField()
    over_soft_limit = serializers.BooleanField()


class BudgetInputSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=BudgetScope.values, default=BudgetScope.TEAM)
    user = StrictCharField(required=False, help_text="username, for scope=user")
    api_key = StrictIntegerField(required=False, help_text="API key id, for scope=api_key")
    period = serializers.ChoiceField(choices=BudgetPeriod.values, default=BudgetPeriod.MONTH)
    hard_limit = serializers.DecimalField(max_digits=24, decimal_places=10, min_value=Decimal(0))
    soft_limit_percent = StrictIntegerField(min_value=1, max_value=100, default=80)
    enabled = serializers.BooleanField(default=True)


def _budget_targets(team, values: dict) -> dict:
    user = api_key = None
    if values.get("user"):
        membership = team_scoped(Membership, team).filter(user__username=values["user"]).select_related("user").first()
        if membership is None:
            raise ValidationFailed(f"no member called {values['user']!r} in this team")
        user = membership.user
    if values.get("api_key"):
        api_key = team_scoped(ApiKey, team).filter(pk=values["api_key"]).first()
        if api_key is None:
            raise ValidationFailed("no such API key in this team")
    return {"user": user, "api_key": api_key}


class BudgetListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(
        responses=list_of(BudgetOutputSerializer, paginated=False),
        operation_id="api_v1_budgets_list",
        summary="Budgets with this period's spend (members read)",
    )
    def get(self, request):
        statuses = cost_selectors.team_budget_statuses(team=request.team)
        return Response({"count": len(statuses), "results": BudgetOutputSerializer(statuses, many=True).data})

    @extend_schema(
        request=BudgetInputSerializer,
        responses={201: BudgetOutputSerializer},
        summary="Create a budget (admins)",
    )
    def post(self, request):
        data = BudgetInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        budget = cost_services.budget_save(
            team=request.team,
            scope=values["scope"],
            period=values["period"],
            hard_limit=values["hard_limit"],
            soft_limit_percent=values["soft_limit_percent"],
            enabled=values["enabled"],
            **_budget_targets(request.team, values),
        )
        return Response(BudgetOutputSerializer(cost_selectors.budget_status(budget=budget)).data, status=201)


class BudgetDetailView(APIView):
    required_scopes = {"PATCH": "admin", "DELETE": "admin"}

    @extend_schema(responses=BudgetOutputSerializer, summary="One budget")
    def get(self, request, budget_id: int):
        budget = team_object_or_404(Budget, request.team, pk=budget_id)
        return Response(BudgetOutputSerializer(cost_selectors.budget_status(budget=budget)).data)

    @extend_schema(
        request=BudgetInputSerializer(partial=True),
        responses=BudgetOutputSerializer,
        summary="Change a budget (admins)",
    )
    def patch(self, request, budget_id: int):
        budget = team_object_or_404(Budget, request.team, pk=budget_id)
        data = BudgetInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = {
            "scope": budget.scope, "period": budget.period, "hard_limit": budget.hard_limit,
            "soft_limit_percent": budget.soft_limit_percent, "enabled": budget.enabled,
            "user": getattr(budget.user, "username", None), "api_key": budget.api_key_id,
            **data.validated_data,
        }
        budget = cost_services.budget_save(
            team=request.team, budget=budget, scope=values["scope"], period=values["period"],
            hard_limit=values["hard_limit"], soft_limit_percent=values["soft_limit_percent"],
            enabled=values["enabled"], **_budget_targets(request.team, values),
        )
        return Response(BudgetOutputSerializer(cost_selectors.budget_status(budget=budget)).data)

    @extend_schema(responses={204: None}, summary="Delete a budget (admins)")
    def delete(self, request, budget_id: int):
        team_object_or_404(Budget, request.team, pk=budget_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
