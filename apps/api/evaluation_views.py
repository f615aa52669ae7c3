"""REST: evaluation sets (upload or pick a shipped one) and evaluation runs (start, status and results,
download). One view per operation, thin: the work is in apps.evaluations' services and selectors."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.serializers import MoneyField, StrictCharField, list_of
from apps.api.shortcuts import find_by_name_or_id, paginated_response, request_api_key
from apps.core.errors import ValidationFailed
from apps.evaluations import selectors as eval_selectors
from apps.evaluations import services as eval_services
from apps.rag import selectors as rag_selectors


class EvalSetOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    source = serializers.CharField(help_text="upload | shipped")
    filename = serializers.CharField()
    size = serializers.IntegerField(help_text="How many questions")
    created_at = serializers.DateTimeField()


class EvalSetInputSerializer(serializers.Serializer):
    name = StrictCharField(required=False, max_length=200, help_text="The set's name (default: the file's name)")
    file = serializers.FileField(required=False, help_text=".csv (question, answer[, id]; answers split by |) "
                                 "or .jsonl / .json (question, answers[, id])")
    shipped = StrictCharField(required=False, help_text="Instead of a file: a shipped set's name (parsimony-docs)")


class EvalSetListView(APIView):
    required_scope = "query"
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(responses=list_of(EvalSetOutputSerializer), summary="The team's evaluation sets")
    def get(self, request):
        return paginated_response(self, request, eval_selectors.eval_set_list(team=request.team),
                                  EvalSetOutputSerializer)

    @extend_schema(request={"multipart/form-data": EvalSetInputSerializer, "application/json": EvalSetInputSerializer},
                   responses={201: EvalSetOutputSerializer},
                   summary="Upload a labelled set (a file) or copy a shipped one (shipped)")
    def post(self, request):
        data = EvalSetInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if ("file" in values) == ("shipped" in values):
            raise ValidationFailed("send either a file or the name of a shipped set")
        if "shipped" in values:
            eval_set = eval_services.eval_set_from_shipped(team=request.team, shipped=values["shipped"],
                                                           user=request.user)
        else:
            upload = values["file"]
            eval_set = eval_services.eval_set_upload(
                team=request.team, name=values.get("name", ""), filename=upload.name, data=upload.read(),
                user=request.user,
            )
        return Response(EvalSetOutputSerializer(eval_set).data, status=status.HTTP_201_CREATED)


class EvalPipelineSerializer(serializers.Serializer):
    pipeline = serializers.CharField()
    questions = serializers.IntegerField()
    failed = serializers.IntegerField()
    correct = serializers.IntegerField(help_text="Answers containing a gold answer")
    contained = serializers.FloatField(allow_null=True, help_text="Share of answers containing a gold answer")
    f1 = serializers.FloatField(allow_null=True, help_text="Mean token F1 against the best gold answer")
    exact_match = serializers.FloatField(allow_null=True)
    cost = MoneyField()
    cost_per_question = MoneyField(allow_null=True)
    cost_of_pass = MoneyField(allow_null=True, help_text="Cost per right answer; null when none is right")
    p50_latency_ms = serializers.IntegerField(allow_null=True)
    frontier = serializers.BooleanField(help_text="No other pipeline is as cheap and as accurate (contained)")


class EvalRunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    eval_set = serializers.CharField(source="eval_set.name")
    pipelines = serializers.ListField(source="pipeline_names", child=serializers.CharField())
    questions = serializers.SerializerMethodField()
    progress_done = serializers.IntegerField(source="job.progress_done", allow_null=True, default=None)
    progress_total = serializers.IntegerField(source="job.progress_total", allow_null=True, default=None)
    job_id = serializers.IntegerField(allow_null=True)
    estimate = MoneyField(help_text="The worst case held before the first question ran")
    cost = MoneyField()
    error = serializers.CharField()
    results = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_questions(self, run) -> int:
        return run.eval_set.size

    @extend_schema_field(EvalPipelineSerializer(many=True))
    def get_results(self, run) -> list[dict]:
        return EvalPipelineSerializer(eval_selectors.eval_run_summary(eval_run=run), many=True).data


class EvalRunInputSerializer(serializers.Serializer):
    eval_set = StrictCharField(help_text="An evaluation set name (or id)")
    pipelines = serializers.ListField(child=StrictCharField(), min_length=1, max_length=8,
                                      help_text="Pipeline names (or ids) of the team")


class EvalRunListView(APIView):
    required_scope = "query"

    @extend_schema(responses=list_of(EvalRunOutputSerializer), summary="The team's evaluation runs, newest first",
                   operation_id="api_v1_evaluations_list")
    def get(self, request):
        return paginated_response(self, request, eval_selectors.eval_run_list(team=request.team),
                                  EvalRunOutputSerializer)

    @extend_schema(request=EvalRunInputSerializer, responses={202: EvalRunOutputSerializer},
                   summary="Run a set through several pipelines as one job (its worst case reserved first: 402)")
    def post(self, request):
        data = EvalRunInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        eval_set = find_by_name_or_id(eval_selectors.eval_set_list(team=request.team), values["eval_set"],
                                      noun="eval_set")
        pipelines = [
            find_by_name_or_id(rag_selectors.pipeline_list(team=request.team), name, noun="pipeline")
            for name in values["pipelines"]
        ]
        run = eval_services.eval_run_start(team=request.team, eval_set=eval_set, pipelines=pipelines,
                                           user=request.user, api_key=request_api_key(request))
        run.refresh_from_db()
        return Response(EvalRunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class EvalRunDetailView(APIView):
    @extend_schema(responses=EvalRunOutputSerializer,
                   summary="One evaluation run: progress, and per pipeline accuracy, cost, cost-of-pass, latency")
    def get(self, request, eval_run_id: int):
        run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
        return Response(EvalRunOutputSerializer(run).data)


class EvalRunRowsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("download", str, enum=["json", "csv"], description="json (default) or csv")],
        responses={(200, "application/json"): dict, (200, "text/csv"): str},
        summary="Download every row of a run: question, gold, answer, scores, cost, latency",
    )
    def get(self, request, eval_run_id: int):
        run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
        content, content_type, name = eval_selectors.eval_run_download(
            eval_run=run, kind=request.query_params.get("download", "json")
        )
        response = HttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
