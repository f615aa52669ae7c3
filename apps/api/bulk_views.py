"""REST: bulk question jobs: upload a CSV/JSONL of questions against a pipeline, follow it, download results."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.permissions import only_own_runs
from apps.api.serializers import list_of
from apps.api.shortcuts import find_by_name_or_id, paginated_response, request_api_key
from apps.bulk import selectors as bulk_selectors
from apps.bulk import services as bulk_services
from apps.core.errors import NotFound
from apps.rag.models import Pipeline


def _jobs(request):
    """The team's bulk jobs; a key with ``query`` but not ``read`` sees only those it started."""
    jobs = bulk_selectors.bulk_jobs_for_team(team=request.team)
    return jobs.filter(api_key=request.auth) if only_own_runs(request) else jobs


def _job(request, bulk_job_id: int):
    bulk = bulk_selectors.bulk_job_get(team=request.team, bulk_job_id=bulk_job_id)
    if only_own_runs(request) and bulk.api_key_id != request.auth.pk:
        raise NotFound(f"bulk job {bulk_job_id} not found")
    return bulk


class BulkJobOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    pipeline = serializers.CharField(source="pipeline.name", default=None)
    job = serializers.IntegerField(source="job_id", allow_null=True)
    status = serializers.CharField()
    progress = serializers.SerializerMethodField()
    filename = serializers.CharField()
    input_format = serializers.CharField()
    batch_size = serializers.IntegerField()
    rows_total = serializers.IntegerField()
    rows_done = serializers.IntegerField()
    rows_failed = serializers.IntegerField()
    rows_fallback = serializers.IntegerField(source="batches_fallback")
    estimate = serializers.DecimalField(max_digits=24, decimal_places=10, help_text="The worst case held")
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    baseline_cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    savings = serializers.DecimalField(max_digits=24, decimal_places=10)
    mode = serializers.CharField(help_text="direct, or provider_batch (the endpoint's provider Batch API)")
    provider_batch_id = serializers.CharField(help_text="provider_batch: the provider's batch id, once submitted")
    provider_status = serializers.CharField(help_text="provider_batch: the batch's last status at the provider")
    provider_savings = serializers.DecimalField(
        max_digits=24, decimal_places=10, help_text="provider_batch: the batch price's saving against the normal price")
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_progress(self, bulk) -> dict:
        job = bulk.job
        return {"done": job.progress_done if job else bulk.rows_done, "total": bulk.rows_total,
                "message": job.message if job else ""}


class BulkJobInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A .csv with a 'question' column (optional 'id', 'gold') or a .jsonl "
                                           "of objects with 'question'")
    pipeline = serializers.CharField(help_text="The pipeline's name or id")
    batch_size = serializers.IntegerField(default=1, min_value=1, max_value=16,
                                          help_text="Questions packed per prompt (k); > 1 needs a naive pipeline")
    mode = serializers.ChoiceField(
        choices=["direct", "provider_batch"], default="direct",
        help_text="provider_batch: answered through the endpoint's provider Batch API within 24 h at its batch "
                  "prices (remote endpoints marked batch_api, batch_size 1)")
    format = serializers.ChoiceField(choices=["csv", "jsonl"], required=False,
                                     help_text="The file's format (default: from its name)")


class BulkJobListView(APIView):
    required_scope = "query"
    required_scopes = {"GET": ("read", "query")}
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(operation_id="api_v1_bulk_jobs_list", responses=list_of(BulkJobOutputSerializer),
                   summary="The team's bulk question jobs")
    def get(self, request):
        return paginated_response(self, request, _jobs(request), BulkJobOutputSerializer)

    @extend_schema(request={"multipart/form-data": BulkJobInputSerializer}, responses={202: BulkJobOutputSerializer},
                   summary="Upload questions to run against a pipeline as one background job (its worst case is "
                           "held first: 402 when a budget cannot cover it)")
    def post(self, request):
        data = BulkJobInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        pipeline = find_by_name_or_id(Pipeline.objects.filter(team=request.team), data.validated_data["pipeline"],
                                      noun="pipeline")
        bulk = bulk_services.bulk_job_start(
            team=request.team, pipeline=pipeline, data=upload.read(), filename=upload.name or "",
            input_format=data.validated_data.get("format"), batch_size=data.validated_data["batch_size"],
            user=request.user, api_key=request_api_key(request), mode=data.validated_data["mode"],
        )
        bulk.refresh_from_db()
        return Response(BulkJobOutputSerializer(bulk).data, status=status.HTTP_202_ACCEPTED)


class BulkJobDetailView(APIView):
    required_scopes = {"GET": ("read", "query")}

    @extend_schema(responses=BulkJobOutputSerializer, summary="One bulk job: status, progress, cost, savings")
    def get(self, request, bulk_job_id: int):
        return Response(BulkJobOutputSerializer(_job(request, bulk_job_id)).data)


class BulkJobResultsView(APIView):
    required_scopes = {"GET": ("read", "query")}

    @extend_schema(
        # Not "format": DRF reads that one for content negotiation.
        parameters=[OpenApiParameter("type", str, enum=["csv", "jsonl"], description="the file's type (default csv)")],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
        summary="The job's result file: id, question, answer, cited passages, quality label, cost and tokens per row",
    )
    def get(self, request, bulk_job_id: int):
        bulk = _job(request, bulk_job_id)
        content, content_type, name = bulk_selectors.bulk_result_file(
            bulk=bulk, file_format=request.query_params.get("type", "csv"))
        response = HttpResponse(content, content_type=f"{content_type}; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
