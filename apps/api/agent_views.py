"""REST: tools, agents and agent runs (one view per operation, thin), and the agent path of
the OpenAI-compatible chat endpoint (`model` = an agent's name)."""

from __future__ import annotations

import time

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.agents import selectors, services
from apps.agents.models import AgentRun, AgentRunStatus, ToolKind
from apps.core.errors import ValidationFailed


def _paginate(view: APIView, request, queryset, serializer_class):
    paginator = LimitOffsetPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


# --------------------------------------------------------------------------- tools


class ToolOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    kind = serializers.CharField()
    parameters = serializers.JSONField()
    config = serializers.JSONField()
    examples = serializers.JSONField()
    enabled = serializers.BooleanField()
    version = serializers.IntegerField()
    is_global = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ToolInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(max_length=4000)
    kind = serializers.ChoiceField(choices=ToolKind.values, default=ToolKind.PYTHON)
    parameters = serializers.JSONField(required=False, help_text="A JSON schema of type object (python: optional)")
    config = serializers.JSONField(required=False)
    examples = serializers.ListField(child=serializers.CharField(max_length=1000), required=False, max_length=200)
    enabled = serializers.BooleanField(required=False)


class ToolListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(responses=ToolOutputSerializer(many=True), summary="The tools the team's agents can use (its own and global)")
    def get(self, request):
        return _paginate(self, request, selectors.tool_list(team=request.team), ToolOutputSerializer)

    @extend_schema(request=ToolInputSerializer, responses={201: ToolOutputSerializer}, summary="Create a tool (indexed at once)")
    def post(self, request):
        data = ToolInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tool = services.tool_create(team=request.team, created_by=request.user, **data.validated_data)
        return Response(ToolOutputSerializer(tool).data, status=status.HTTP_201_CREATED)


class ToolDetailView(APIView):
    required_scopes = {"PATCH": "admin", "DELETE": "admin"}

    @extend_schema(responses=ToolOutputSerializer, summary="One tool (the team's or a global one)")
    def get(self, request, tool_id: int):
        return Response(ToolOutputSerializer(selectors.tool_get(team=request.team, tool_id=tool_id)).data)

    @extend_schema(request=ToolInputSerializer(partial=True), responses=ToolOutputSerializer,
                   summary="Change one of the team's tools (its version goes up; it is re-indexed)")
    def patch(self, request, tool_id: int):
        tool = selectors.tool_get(team=request.team, tool_id=tool_id, editable=True)
        data = ToolInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        tool = services.tool_update(tool=tool, **data.validated_data)
        return Response(ToolOutputSerializer(tool).data)

    @extend_schema(responses={204: None}, summary="Delete one of the team's tools")
    def delete(self, request, tool_id: int):
        services.tool_delete(tool=selectors.tool_get(team=request.team, tool_id=tool_id, editable=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- agents


class AgentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    model = serializers.CharField(source="model_endpoint.name")
    system_prompt = serializers.CharField()
    top_k = serializers.IntegerField()
    similarity_threshold = serializers.FloatField()
    max_depth = serializers.IntegerField()
    step_limit = serializers.IntegerField()
    tool_timeout_s = serializers.FloatField()
    max_output_tokens = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class AgentInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=120)
    model = serializers.CharField(help_text="A model endpoint name (GET /v1/models)")
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    system_prompt = serializers.CharField(required=False, allow_blank=True)
    top_k = serializers.IntegerField(required=False)
    similarity_threshold = serializers.FloatField(required=False)
    max_depth = serializers.IntegerField(required=False)
    step_limit = serializers.IntegerField(required=False)
    tool_timeout_s = serializers.FloatField(required=False)
    max_output_tokens = serializers.IntegerField(required=False)


def _agent_values(data: dict) -> dict:
    return {key: data[key] for key in services.AGENT_FIELDS if key in data}


class AgentListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(responses=AgentOutputSerializer(many=True), summary="The team's agents")
    def get(self, request):
        return _paginate(self, request, selectors.agent_list(team=request.team), AgentOutputSerializer)

    @extend_schema(request=AgentInputSerializer, responses={201: AgentOutputSerializer}, summary="Create an agent")
    def post(self, request):
        data = AgentInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agent = services.agent_save(team=request.team, name=values["name"], model_endpoint=values["model"],
                                    created_by=request.user, **_agent_values(values))
        return Response(AgentOutputSerializer(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailView(APIView):
    required_scopes = {"PATCH": "admin", "DELETE": "admin"}

    @extend_schema(responses=AgentOutputSerializer, summary="One agent")
    def get(self, request, agent_id: int):
        return Response(AgentOutputSerializer(selectors.agent_get(team=request.team, agent_id=agent_id)).data)

    @extend_schema(request=AgentInputSerializer(partial=True), responses=AgentOutputSerializer, summary="Change an agent")
    def patch(self, request, agent_id: int):
        agent = selectors.agent_get(team=request.team, agent_id=agent_id)
        data = AgentInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agent = services.agent_save(team=request.team, agent=agent, name=values.get("name", agent.name),
                                    model_endpoint=values.get("model") or agent.model_endpoint, **_agent_values(values))
        return Response(AgentOutputSerializer(agent).data)

    @extend_schema(responses={204: None}, summary="Delete an agent (its runs stay)")
    def delete(self, request, agent_id: int):
        services.agent_delete(agent=selectors.agent_get(team=request.team, agent_id=agent_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- runs


class AgentRunOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    agent = serializers.CharField(source="agent.name", allow_null=True, default=None)
    status = serializers.CharField()
    request = serializers.CharField()
    answer = serializers.CharField()
    finish_reason = serializers.CharField()
    error = serializers.CharField()
    steps = serializers.JSONField()
    tools_offered = serializers.JSONField()
    tools_called = serializers.JSONField()
    model_calls = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    latency_ms = serializers.IntegerField()
    job_id = serializers.IntegerField(allow_null=True)
    stages = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_stages(self, run) -> list[dict]:
        return [{**row, "cost": str(row["cost"])} for row in selectors.agent_run_stages(run=run)]


class AgentRunInputSerializer(serializers.Serializer):
    agent = serializers.CharField(help_text="An agent name (or id)")
    request = serializers.CharField(max_length=20_000)
    mode = serializers.ChoiceField(choices=["sync", "async"], default="sync")
    timeout_s = serializers.FloatField(required=False, min_value=0.1, max_value=600)


class AgentRunListView(APIView):
    required_scope = "query"

    @extend_schema(responses=AgentRunOutputSerializer(many=True), summary="The team's agent runs, newest first")
    def get(self, request):
        return _paginate(self, request, selectors.agent_run_list(team=request.team), AgentRunOutputSerializer)

    @extend_schema(
        request=AgentRunInputSerializer,
        responses={200: AgentRunOutputSerializer, 202: AgentRunOutputSerializer},
        summary="Run an agent: sync waits up to timeout_s (then 202 with the run to poll); async returns 202 at once",
    )
    def post(self, request):
        data = AgentRunInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agents = selectors.agent_list(team=request.team)
        agent = agents.filter(name=values["agent"]).first()
        if agent is None and values["agent"].isdigit():
            agent = agents.filter(pk=int(values["agent"])).first()
        if agent is None:
            known = ", ".join(agents.values_list("name", flat=True)) or "none"
            raise ValidationFailed(f"unknown agent {values['agent']!r} (available: {known})", code="unknown_agent")
        run = services.agent_run_start(team=request.team, agent=agent, request=values["request"],
                                       user=request.user, api_key=_api_key(request))
        if values["mode"] == "sync":
            run = services.agent_run_wait(run=run, timeout_s=values.get("timeout_s", settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S))
        else:
            run.refresh_from_db()
        code = status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED
        return Response(AgentRunOutputSerializer(run).data, status=code)


class AgentRunDetailView(APIView):
    required_scope = "query"

    @extend_schema(responses=AgentRunOutputSerializer, summary="One agent run: steps, tools, tokens, cost per stage")
    def get(self, request, run_id: int):
        return Response(AgentRunOutputSerializer(selectors.agent_run_get(team=request.team, agent_run_id=run_id)).data)


# --------------------------------------------------------------------------- OpenAI-compatible


def _usage(run: AgentRun) -> dict:
    usage = selectors.agent_run_usage(run=run)  # the ledger's totals of the run's model calls
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": 0}}


def _parsimony(run: AgentRun) -> dict:
    return {"agent_run_id": run.pk, "cost": str(run.cost), "model_calls": run.model_calls,
            "tools_offered": run.tools_offered, "tools_called": run.tools_called}


def _finish_reason(run: AgentRun) -> str:
    return "length" if run.finish_reason in ("length", "step_limit") else "stop"


def agent_chat_completion(request, *, agent, name: str, messages: list[dict], stream: bool, include_usage: bool):
    """The OpenAI chat answer of an agent: like the pipeline path (the last user message is the request)."""
    from apps.api.openai_views import openai_error

    run = services.agent_run_start(team=request.team, agent=agent, messages=messages, user=request.user,
                                   api_key=_api_key(request))
    if stream:
        response = StreamingHttpResponse(_stream(run.pk, name, include_usage), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        response["X-Parsimony-Agent-Run"] = str(run.pk)
        return response
    run = services.agent_run_wait(run=run, timeout_s=settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)
    if run.status == AgentRunStatus.FAILED:
        return openai_error(message=f"the agent run failed: {run.error}", http_status=502, code="upstream_error")
    if not run.is_finished:
        return openai_error(message=f"the agent is still working; poll GET /api/v1/agent-runs/{run.pk}",
                            http_status=504, code="timeout")
    body = {
        "id": f"chatcmpl-agent-{run.pk}",
        "object": "chat.completion",
        "created": int(run.created_at.timestamp()),
        "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": run.answer},
                     "finish_reason": _finish_reason(run)}],
        "usage": _usage(run),
        "parsimony": _parsimony(run),
    }
    response = Response(body, status=status.HTTP_200_OK)
    response["X-Parsimony-Agent-Run"] = str(run.pk)
    response["X-Parsimony-Cost"] = str(run.cost)
    return response


def _stream(run_id: int, model: str, include_usage: bool):
    """Relay the answer as it grows in the AgentRun row."""
    from django.db import close_old_connections

    from apps.api.openai_views import STREAM_POLL_S, _sse

    base = {"id": f"chatcmpl-agent-{run_id}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    sent = 0
    deadline = time.monotonic() + settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S * 3
    try:
        while True:
            run = AgentRun.objects.get(pk=run_id)
            if len(run.answer) > sent:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": run.answer[sent:]}, "finish_reason": None}]})
                sent = len(run.answer)
            if run.is_finished:
                break
            if time.monotonic() > deadline:
                yield _sse({"error": {"message": "timed out waiting for the agent", "type": "server_error", "code": "timeout"}})
                return
            time.sleep(STREAM_POLL_S)
        if run.status == AgentRunStatus.FAILED:
            yield _sse({"error": {"message": f"the agent run failed: {run.error}", "type": "server_error", "code": "upstream_error"}})
            return
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(run)}]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(run), "parsimony": _parsimony(run)})
        yield _sse("[DONE]")
    finally:
        close_old_connections()
