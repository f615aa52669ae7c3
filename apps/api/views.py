"""REST views: thin — authenticate, scope by team, validate, call a service or selector."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.permissions import request_scopes
from apps.api.serializers import JobOutputSerializer, list_of
from apps.api.shortcuts import paginated_response
from apps.core import selectors as job_selectors
from apps.core import services as job_services


class MeView(APIView):
    required_scopes = {"GET": ("read", "query", "ingest")}  # any key may ask what it is
    class OutputSerializer(serializers.Serializer):
        team = serializers.CharField()
        team_slug = serializers.CharField()
        scopes = serializers.ListField(child=serializers.CharField())
        via = serializers.CharField()

    @extend_schema(responses=OutputSerializer, summary="Who am I: the team and scopes of these credentials")
    def get(self, request):
        data = {
            "team": request.team.name,
            "team_slug": request.team.slug,
            "scopes": sorted(request_scopes(request)),
            "via": "api_key" if getattr(request, "api_key", None) else "session",
        }
        return Response(self.OutputSerializer(data).data)


class JobListView(APIView):
    required_scopes = {"GET": ("read", "ingest")}  # an ingest-only key follows its ingestion jobs
    @extend_schema(
        operation_id="api_v1_jobs_list",
        responses=list_of(JobOutputSerializer),
        summary="The team's background jobs, newest first",
    )
    def get(self, request):
        jobs = job_selectors.job_list(
            team=request.team, kind=request.query_params.get("kind"), status=request.query_params.get("status")
        )
        return paginated_response(self, request, jobs, JobOutputSerializer)


class JobDetailView(APIView):
    required_scopes = {"GET": ("read", "ingest")}
    @extend_schema(responses=JobOutputSerializer, summary="One job's status and progress")
    def get(self, request, job_id: int):
        return Response(JobOutputSerializer(job_selectors.job_get(team=request.team, job_id=job_id)).data)


class JobCancelView(APIView):
    required_scope = "ingest"

    @extend_schema(request=None, responses=JobOutputSerializer, summary="Cancel a queued or running job")
    def post(self, request, job_id: int):
        job = job_selectors.job_get(team=request.team, job_id=job_id)
        job_services.job_cancel(job=job)
        return Response(JobOutputSerializer(job).data)
