"""REST: queries (ask a pipeline, sync or async; read the answer with its per-stage cost).
One view per operation, thin."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.answer_cache.selectors import cache_info, cache_status
from apps.api.permissions import only_own_runs
from apps.api.serializers import (
    CitationsField,
    MoneyField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    list_of,
)
from apps.api.shortcuts import (
    find_by_name_or_id,
    paginated_response,
    request_api_key,
    stages_from_context,
    started_run_response,
)
from apps.core.errors import ValidationFailed
from apps.costs.money_format import money_str
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.rag.models import QualityLabel, QueryOrigin

QUALITY_HELP = (
    "grounded (the answer's sentences are supported by the retrieved passages) | weak (partly) | unsupported "
    "| degenerate (a loop stopped by the degeneration guard, or empty) | abstained (\"not found in the "
    "documents\", nothing generated) | \"\" (not assessed: direct calls, fixed-context pipelines). "
    "Independent of status (docs/quality.md)"
)


class QueryRunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    origin = serializers.CharField(help_text="ask (a person or client asked), evaluation or bulk (a job's row)")
    pipeline = serializers.CharField(source="pipeline.name", allow_null=True, default=None)
    model = serializers.CharField(source="endpoint.name", allow_null=True, default=None)
    question = serializers.CharField()
    answer = serializers.CharField()
    finish_reason = serializers.CharField(
        help_text="stop | length | time_limit | budget | repetition (the degeneration guard stopped a loop) | "
        "extractive (the answer quotes the passages: nothing was generated) | error"
    )
    repetition_tokens_saved = serializers.IntegerField(
        help_text="Output tokens of the cap not spent because the degeneration guard stopped a loop"
    )
    quality_label = serializers.CharField(help_text=QUALITY_HELP)
    support = serializers.FloatField(
        allow_null=True, help_text="Share of the answer's sentences a retrieved passage supports (0..1)"
    )
    support_score = serializers.FloatField(
        allow_null=True, help_text="Mean sentence support (cosine and token overlap with the best passage), 0..1"
    )
    retrieval_confidence = serializers.FloatField(
        allow_null=True,
        help_text="The best hit's percentile among the pipeline's earlier runs' best hits (0..1); null until "
        "the pipeline has 5 earlier runs",
    )
    citations_removed = serializers.IntegerField(
        help_text="Citation markers pointing past the sources, removed from the answer"
    )
    cascade = serializers.JSONField(
        help_text="A cascade's run: {answered_by, tier, tiers_run, reason, tiers: [{pipeline, score, threshold, "
        "decision (accept | escalate), reason, cost, quality_label}]}; {} for other pipelines (docs/cascades.md)"
    )
    degradation = serializers.JSONField(
        help_text="The budget degradation applied before the hold: {note, used_percent, budget, above_percent, "
        "top_k_cap, max_tiers, extractive_only}; {} when none (docs/cascades.md)"
    )
    error = serializers.CharField()
    citations = CitationsField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    context_tokens_before = serializers.IntegerField()
    context_tokens_after = serializers.IntegerField()
    cost = MoneyField()
    baseline_cost = MoneyField()
    baseline_kind = serializers.CharField(
        help_text="How baseline_cost was obtained: exact (token prices), estimate (device time from the cost "
        "model), measured (a direct call: what ran)"
    )
    measured_baseline_cost = MoneyField(
        allow_null=True,
        help_text="The naive pipeline run for real (a shadow baseline, paid by the operator); null without one",
    )
    savings = MoneyField()
    latency_ms = serializers.IntegerField()
    job_id = serializers.IntegerField(allow_null=True)
    stages = serializers.SerializerMethodField()
    cache = serializers.SerializerMethodField(
        help_text="The answer cache (docs/cache.md): {status: hit | miss | bypass, kind: exact | semantic | \"\", "
        "similarity, saved (what a hit saved against running the pipeline), source_query_run_id}"
    )
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_stages(self, run) -> list[dict]:
        return [
            {
                **row,
                "cost": money_str(row["cost"]),
                "gpu_seconds": str(row["gpu_seconds"]),
                "cpu_seconds": str(row["cpu_seconds"]),
            }
            for row in stages_from_context(self.context, run, rag_selectors.query_run_stages)
        ]

    def get_cache(self, run) -> dict:
        return cache_info(run=run)


class QueryInputSerializer(serializers.Serializer):
    pipeline = StrictCharField(help_text="A pipeline name (or id)")
    question = StrictCharField(max_length=20_000)
    mode = serializers.ChoiceField(choices=["sync", "async"], default="sync")
    timeout_s = StrictFloatField(required=False, min_value=0.1, max_value=600)
    max_output_tokens = StrictIntegerField(required=False, min_value=1, max_value=32_768)
    cache = serializers.BooleanField(
        required=False, help_text="false: do not answer from (or store in) the team's answer cache"
    )


class QueryListView(APIView):
    required_scope = "query"

    @extend_schema(
        operation_id="api_v1_queries_list",
        parameters=[
            OpenApiParameter("quality", str, enum=[*QualityLabel.values, "none"],
                             description="Only runs with this quality label (none: not assessed)"),
            OpenApiParameter("origin", str, enum=[*QueryOrigin.values, "all"],
                             description="Only runs asked this way (default ask: not evaluation or bulk job rows)"),
        ],
        responses=list_of(QueryRunOutputSerializer),
        summary="The team's queries, newest first",
    )
    def get(self, request):
        quality = request.query_params.get("quality")
        if quality is not None and quality not in [*QualityLabel.values, "none"]:
            raise ValidationFailed(
                f"unknown quality {quality!r} (valid: {', '.join([*QualityLabel.values, 'none'])})",
                detail={"fields": {"quality": quality}},
            )
        origin = request.query_params.get("origin", QueryOrigin.ASK)
        if origin not in [*QueryOrigin.values, "all"]:
            raise ValidationFailed(
                f"unknown origin {origin!r} (valid: {', '.join([*QueryOrigin.values, 'all'])})",
                detail={"fields": {"origin": origin}},
            )
        runs = rag_selectors.query_run_list(team=request.team, quality=quality,
                                            origin=None if origin == "all" else origin)
        return paginated_response(
            self, request, runs, QueryRunOutputSerializer,
            page_context=lambda runs: {
                "stages": rag_selectors.query_run_stages_by_run(team=request.team, run_ids=[run.pk for run in runs])
            },
        )

    @extend_schema(
        request=QueryInputSerializer,
        responses={200: QueryRunOutputSerializer, 202: QueryRunOutputSerializer},
        summary="Ask a pipeline: sync waits up to timeout_s (then 202 with the job to poll); async returns 202 at once",
    )
    def post(self, request):
        data = QueryInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipeline = find_by_name_or_id(
            rag_selectors.pipeline_list(team=request.team), values["pipeline"], noun="pipeline"
        )
        run = rag_services.query_run_start(
            team=request.team,
            pipeline=pipeline,
            question=values["question"],
            max_output_tokens=values.get("max_output_tokens"),
            user=request.user,
            api_key=request_api_key(request),
            cache=values.get("cache"),
        )
        response = started_run_response(run, mode=values["mode"], timeout_s=values.get("timeout_s"),
                                        wait=rag_services.query_run_wait, serializer_class=QueryRunOutputSerializer)
        response["X-Parsimony-Cache"] = cache_status(run=run)
        return response


class QueryDetailView(APIView):
    required_scope = "query"
    # A query-only key polls the queries it started (async mode); `read` sees the team's.
    required_scopes = {"GET": ("read", "query")}

    @extend_schema(responses=QueryRunOutputSerializer, summary="One query: answer, citations, per-stage cost")
    def get(self, request, query_id: int):
        run = rag_selectors.query_run_get(team=request.team, query_run_id=query_id)
        if only_own_runs(request) and run.api_key_id != request.auth.pk:
            raise Http404("not found")
        return Response(QueryRunOutputSerializer(run).data)


class QueryCancelView(APIView):
    """Stop a query: the worker stops before its next token, bills the tokens it generated and settles the
    hold to them; the run ends "cancelled" (finish_reason "cancelled"). A finished run is returned as it is."""

    required_scope = "query"

    @extend_schema(request=None, responses=QueryRunOutputSerializer, summary="Cancel a queued or running query")
    def post(self, request, query_id: int):
        run = rag_selectors.query_run_get(team=request.team, query_run_id=query_id)
        if only_own_runs(request) and run.api_key_id != request.auth.pk:
            raise Http404("not found")
        rag_services.query_run_cancel(run=run, wait_s=5)
        run.refresh_from_db()
        return Response(QueryRunOutputSerializer(run).data)
