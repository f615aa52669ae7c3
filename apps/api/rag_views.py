"""REST: pipelines, queries, usage and budgets. One view per operation, thin."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.api.serializers import JobOutputSerializer
from apps.core.errors import ValidationFailed
from apps.core.scoping import team_object_or_404, team_scoped
from apps.costs import selectors as cost_selectors
from apps.costs import services as cost_services
from apps.costs.models import Budget, BudgetPeriod, BudgetScope
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.rag.fixed_context import fixed_context_prefill_start
from apps.rag.models import QueryRun, Retriever


def _paginate(view: APIView, request, queryset, serializer_class):
    paginator = LimitOffsetPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _corpus_for(team, corpus_id: int | None):
    """The team's corpus ``corpus_id`` (None clears); another team's id reads as unknown, like a missing one."""
    from apps.corpora.models import Corpus

    if corpus_id is None:
        return None
    corpus = team_scoped(Corpus, team).filter(pk=corpus_id).first()
    if corpus is None:
        raise ValidationFailed(
            f"unknown corpus: {corpus_id}", detail={"fields": {"fixed_context_corpus": "not found"}}
        )
    return corpus


def _corpora_for(team, ids: list[int]):
    from apps.corpora.models import Corpus

    corpora = list(team_scoped(Corpus, team).filter(pk__in=ids))
    missing = sorted(set(ids) - {c.pk for c in corpora})
    if missing:
        raise ValidationFailed(f"unknown corpora: {missing}", detail={"fields": {"corpora": "not found"}})
    return corpora


# --------------------------------------------------------------------------- pipelines


class PipelineOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    corpora = serializers.SerializerMethodField()
    retriever = serializers.CharField()
    top_k = serializers.IntegerField()
    compression_method = serializers.CharField()
    compression_target = serializers.FloatField()
    prompting_strategy = serializers.CharField()
    prompting_options = serializers.JSONField(help_text="Options of the prompting strategy (e.g. top_k, answer_mode)")
    attention_backend = serializers.CharField()
    attention_options = serializers.JSONField(help_text="Options of the attention backend (e.g. keep_fraction, top_k)")
    fixed_context = serializers.CharField(help_text="A long text every question is answered from (empty: none)")
    fixed_context_corpus = serializers.IntegerField(
        source="fixed_context_corpus_id", allow_null=True, help_text="A corpus used as the fixed context (text wins)"
    )
    has_fixed_context = serializers.BooleanField()
    model = serializers.CharField(source="model_endpoint.name")
    max_output_tokens = serializers.IntegerField()
    system_prompt = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_corpora(self, pipeline) -> list[int]:
        return [corpus.pk for corpus in pipeline.corpora.all()]


class PipelineInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=120)
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    corpora = serializers.ListField(child=serializers.IntegerField(), required=False)
    retriever = serializers.CharField(required=False)
    top_k = serializers.IntegerField(required=False)
    compression_method = serializers.CharField(required=False)
    compression_target = serializers.FloatField(required=False)
    prompting_strategy = serializers.CharField(required=False)
    prompting_options = serializers.JSONField(
        required=False,
        help_text="An object: the fields of the strategy's config (superposition: "
        "{\"top_k\": 2, \"positions\": \"equalized\", \"answer_mode\": \"superposed\"})",
    )
    attention_backend = serializers.CharField(required=False, help_text="full | squeezed | retrieval")
    attention_options = serializers.JSONField(
        required=False, help_text="An object: the fields of the backend's config (e.g. {\"keep_fraction\": 0.1})"
    )
    fixed_context = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False,
        help_text="A long text every question is answered from (skips retrieval); blank clears it",
    )
    fixed_context_corpus = serializers.IntegerField(
        required=False, allow_null=True, help_text="The id of a corpus of this team used as the fixed context; null clears it"
    )
    model = serializers.CharField(help_text="A model endpoint name (GET /v1/models)")
    max_output_tokens = serializers.IntegerField(required=False)
    system_prompt = serializers.CharField(required=False, allow_blank=True)


def _pipeline_values(team, data: dict) -> dict:
    values = {key: data[key] for key in rag_services.PIPELINE_FIELDS if key in data}
    if "fixed_context_corpus" in values:
        values["fixed_context_corpus"] = _corpus_for(team, values["fixed_context_corpus"])
    return values


class PipelineListView(APIView):
    required_scope = "admin"

    @extend_schema(responses=PipelineOutputSerializer(many=True), summary="The team's pipelines")
    def get(self, request):
        return _paginate(self, request, rag_selectors.pipeline_list(team=request.team), PipelineOutputSerializer)

    @extend_schema(request=PipelineInputSerializer, responses={201: PipelineOutputSerializer}, summary="Create a pipeline")
    def post(self, request):
        data = PipelineInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipeline = rag_services.pipeline_save(
            team=request.team,
            name=values["name"],
            model_endpoint=values["model"],
            corpora=_corpora_for(request.team, values.get("corpora", [])),
            created_by=request.user,
            **_pipeline_values(request.team, values),
        )
        return Response(PipelineOutputSerializer(pipeline).data, status=status.HTTP_201_CREATED)


class PipelineDetailView(APIView):
    required_scope = "admin"

    @extend_schema(responses=PipelineOutputSerializer, summary="One pipeline")
    def get(self, request, pipeline_id: int):
        return Response(PipelineOutputSerializer(rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)).data)

    @extend_schema(request=PipelineInputSerializer(partial=True), responses=PipelineOutputSerializer, summary="Change a pipeline")
    def patch(self, request, pipeline_id: int):
        pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
        data = PipelineInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipeline = rag_services.pipeline_save(
            team=request.team,
            pipeline=pipeline,
            name=values.get("name", pipeline.name),
            model_endpoint=values.get("model") or pipeline.model_endpoint,
            corpora=_corpora_for(request.team, values["corpora"]) if "corpora" in values else None,
            **_pipeline_values(request.team, values),
        )
        return Response(PipelineOutputSerializer(pipeline).data)

    @extend_schema(responses={204: None}, summary="Delete a pipeline")
    def delete(self, request, pipeline_id: int):
        rag_services.pipeline_delete(pipeline=rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class PrefillInputSerializer(serializers.Serializer):
    backends = serializers.ListField(
        child=serializers.CharField(), required=False, allow_empty=True,
        help_text="Attention backends whose indexes to build (default: the pipeline's own backend)",
    )


class PrefillJobOutputSerializer(JobOutputSerializer):
    # A plain string here: a second component with the job's status choices would rename the enum.
    status = serializers.CharField(help_text="queued | running | succeeded | failed | cancelled")
    url = serializers.SerializerMethodField(help_text="Poll this for the job's status and progress")

    class Meta(JobOutputSerializer.Meta):
        fields = [*JobOutputSerializer.Meta.fields, "url"]

    def get_url(self, job) -> str:
        path = reverse("api-job", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class PipelinePrefillView(APIView):
    required_scope = "admin"

    @extend_schema(
        request=PrefillInputSerializer,
        responses={202: PrefillJobOutputSerializer},
        summary="Prefill the pipeline's fixed context (KV cache + attention indexes) in a gpu job; poll the job's url",
        description=(
            "Reserves the prefill's worst-case cost first (402 when a budget cannot cover it), then starts the "
            "`attention.prefill` job. 400 when the pipeline has no fixed context, its model endpoint is remote, or "
            "a backend name is unknown. The job's compute is billed as one `prefill` ledger row."
        ),
    )
    def post(self, request, pipeline_id: int):
        pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
        data = PrefillInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = fixed_context_prefill_start(
            pipeline=pipeline,
            user=request.user,
            backends=data.validated_data.get("backends") or None,
            api_key=request.auth if isinstance(request.auth, ApiKey) else None,
        )
        job.refresh_from_db()
        body = PrefillJobOutputSerializer(job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


# --------------------------------------------------------------------------- queries


class QueryRunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    pipeline = serializers.CharField(source="pipeline.name", allow_null=True, default=None)
    model = serializers.CharField(source="endpoint.name", allow_null=True, default=None)
    question = serializers.CharField()
    answer = serializers.CharField()
    finish_reason = serializers.CharField()
    error = serializers.CharField()
    citations = serializers.JSONField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    context_tokens_before = serializers.IntegerField()
    context_tokens_after = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    baseline_cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    savings = serializers.DecimalField(max_digits=24, decimal_places=10)
    latency_ms = serializers.IntegerField()
    job_id = serializers.IntegerField(allow_null=True)
    stages = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_stages(self, run) -> list[dict]:
        return [
            {**row, "cost": str(row["cost"]), "gpu_seconds": str(row["gpu_seconds"]), "cpu_seconds": str(row["cpu_seconds"])}
            for row in rag_selectors.query_run_stages(run=run)
        ]


class QueryInputSerializer(serializers.Serializer):
    pipeline = serializers.CharField(help_text="A pipeline name (or id)")
    question = serializers.CharField(max_length=20_000)
    mode = serializers.ChoiceField(choices=["sync", "async"], default="sync")
    timeout_s = serializers.FloatField(required=False, min_value=0.1, max_value=600)
    max_output_tokens = serializers.IntegerField(required=False, min_value=1, max_value=32_768)


class QueryListView(APIView):
    required_scope = "query"

    @extend_schema(responses=QueryRunOutputSerializer(many=True), summary="The team's queries, newest first")
    def get(self, request):
        return _paginate(self, request, rag_selectors.query_run_list(team=request.team), QueryRunOutputSerializer)

    @extend_schema(
        request=QueryInputSerializer,
        responses={200: QueryRunOutputSerializer, 202: QueryRunOutputSerializer},
        summary="Ask a pipeline: sync waits up to timeout_s (then 202 with the job to poll); async returns 202 at once",
    )
    def post(self, request):
        data = QueryInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipelines = rag_selectors.pipeline_list(team=request.team)
        pipeline = pipelines.filter(name=values["pipeline"]).first()
        if pipeline is None and values["pipeline"].isdigit():
            pipeline = pipelines.filter(pk=int(values["pipeline"])).first()
        if pipeline is None:
            known = ", ".join(pipelines.values_list("name", flat=True)) or "none"
            raise ValidationFailed(f"unknown pipeline {values['pipeline']!r} (available: {known})", code="unknown_pipeline")
        run = rag_services.query_run_start(
            team=request.team,
            pipeline=pipeline,
            question=values["question"],
            max_output_tokens=values.get("max_output_tokens"),
            user=request.user,
            api_key=request.auth if isinstance(request.auth, ApiKey) else None,
        )
        if values["mode"] == "sync":
            run = rag_services.query_run_wait(
                run=run, timeout_s=values.get("timeout_s", settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)
            )
        else:
            run.refresh_from_db()
        code = status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED
        return Response(QueryRunOutputSerializer(run).data, status=code)


class QueryDetailView(APIView):
    required_scope = "query"

    @extend_schema(responses=QueryRunOutputSerializer, summary="One query: answer, citations, per-stage cost")
    def get(self, request, query_id: int):
        return Response(QueryRunOutputSerializer(rag_selectors.query_run_get(team=request.team, query_run_id=query_id)).data)


# --------------------------------------------------------------------------- usage


GROUPS = {"day": "day", "model": "model_name", "user": "user", "api_key": "api_key", "pipeline": "pipeline_name", "stage": "stage"}


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
        summary="Spend and tokens grouped by day, model, user, API key, pipeline or stage, with savings",
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
        savings = rag_selectors.savings_by(team=request.team, since=since, until=until, field=savings_field or "pipeline")
        return Response(
            {
                "group_by": group,
                "total_cost": str(total),
                "rows": [{**row, "key": str(row["key"]) if row["key"] is not None else None, "cost": str(row["cost"])} for row in rows],
                "savings": [
                    {**row, "key": row["key"], "cost": str(row["cost"] or 0), "baseline_cost": str(row["baseline_cost"] or 0),
                     "savings": str(row["savings"] or 0)}
                    for row in savings
                ],
            }
        )


# --------------------------------------------------------------------------- budgets


class BudgetOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="budget.pk")
    scope = serializers.CharField(source="budget.scope")
    user = serializers.CharField(source="budget.user.username", allow_null=True, default=None)
    api_key = serializers.IntegerField(source="budget.api_key_id", allow_null=True)
    period = serializers.CharField(source="budget.period")
    hard_limit = serializers.DecimalField(source="budget.hard_limit", max_digits=24, decimal_places=10)
    soft_limit_percent = serializers.IntegerField(source="budget.soft_limit_percent")
    enabled = serializers.BooleanField(source="budget.enabled")
    period_start = serializers.DateTimeField()
    spent = serializers.DecimalField(max_digits=24, decimal_places=10)
    reserved = serializers.DecimalField(max_digits=24, decimal_places=10)
    remaining = serializers.DecimalField(max_digits=24, decimal_places=10)
    used_percent = serializers.FloatField()
    over_soft_limit = serializers.BooleanField()


class BudgetInputSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=BudgetScope.values, default=BudgetScope.TEAM)
    user = serializers.CharField(required=False, help_text="username, for scope=user")
    api_key = serializers.IntegerField(required=False, help_text="API key id, for scope=api_key")
    period = serializers.ChoiceField(choices=BudgetPeriod.values, default=BudgetPeriod.MONTH)
    hard_limit = serializers.DecimalField(max_digits=24, decimal_places=10, min_value=Decimal(0))
    soft_limit_percent = serializers.IntegerField(min_value=1, max_value=100, default=80)
    enabled = serializers.BooleanField(default=True)


def _budget_targets(team, values: dict) -> dict:
    from apps.accounts.models import Membership

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

    @extend_schema(responses=BudgetOutputSerializer(many=True), summary="Budgets with this period's spend (members read)")
    def get(self, request):
        statuses = cost_selectors.team_budget_statuses(team=request.team)
        return Response({"count": len(statuses), "results": BudgetOutputSerializer(statuses, many=True).data})

    @extend_schema(request=BudgetInputSerializer, responses={201: BudgetOutputSerializer}, summary="Create a budget (admins)")
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

    @extend_schema(request=BudgetInputSerializer(partial=True), responses=BudgetOutputSerializer, summary="Change a budget (admins)")
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


__all__ = ["QueryRun", "Retriever"]
