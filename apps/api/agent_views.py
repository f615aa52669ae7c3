"""REST: tools, agents and agent runs (one view per operation, thin).

The OpenAI-compatible chat answer of an agent (`model` = an agent's name) is in
`apps.api.openai_views`, its shapes in `apps.api.openai_format`."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents import selectors, services
from apps.agents.models import ToolKind
from apps.api.permissions import only_own_runs
from apps.api.serializers import (
    MoneyField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSlugField,
    list_of,
)
from apps.api.shortcuts import (
    find_by_name_or_id,
    paginated_response,
    request_api_key,
    stages_from_context,
    started_run_response,
)
from apps.costs.money_format import money_str

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
    name = StrictCharField(max_length=64)
    description = StrictCharField(max_length=4000)
    kind = serializers.ChoiceField(choices=ToolKind.values, default=ToolKind.PYTHON)
    parameters = serializers.JSONField(required=False, help_text="A JSON schema of type object (python: optional)")
    config = serializers.JSONField(required=False)
    examples = serializers.ListField(child=StrictCharField(max_length=1000), required=False, max_length=200)
    enabled = serializers.BooleanField(required=False)


class ToolListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(
        responses=list_of(ToolOutputSerializer),
        operation_id="api_v1_tools_list",
        summary="The tools the team's agents can use (its own and global)",
    )
    def get(self, request):
        return paginated_response(self, request, selectors.tool_list(team=request.team), ToolOutputSerializer)

    @extend_schema(
        request=ToolInputSerializer,
        responses={201: ToolOutputSerializer},
        summary="Create a tool (indexed at once)",
    )
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
        tool = services.tool_update(tool=tool, user=request.user, **data.validated_data)
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
    name = StrictSlugField(max_length=120)
    model = StrictCharField(help_text="A model endpoint name (GET /v1/models)")
    description = StrictCharField(required=False, allow_blank=True, max_length=500)
    system_prompt = StrictCharField(required=False, allow_blank=True)
    top_k = StrictIntegerField(required=False)
    similarity_threshold = StrictFloatField(required=False)
    max_depth = StrictIntegerField(required=False)
    step_limit = StrictIntegerField(required=False)
    tool_timeout_s = StrictFloatField(required=False)
    max_output_tokens = StrictIntegerField(required=False)


def _agent_values(data: dict) -> dict:
    return {key: data[key] for key in services.AGENT_FIELDS if key in data}


class AgentListView(APIView):
    required_scopes = {"POST": "admin"}

    @extend_schema(
        operation_id="api_v1_agents_list",
        responses=list_of(AgentOutputSerializer),
        summary="The team's agents",
    )
    def get(self, request):
        return paginated_response(self, request, selectors.agent_list(team=request.team), AgentOutputSerializer)

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

    @extend_schema(
        request=AgentInputSerializer(partial=True), responses=AgentOutputSerializer, summary="Change an agent"
    )
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
    tool_outcome = serializers.CharField(
        help_text="tools_called | no_tools_found | no_tool_called (offered tools, called none) | tool_failed; "
        "empty while running"
    )
    model_calls = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = MoneyField()
    latency_ms = serializers.IntegerField()
    job_id = serializers.IntegerField(allow_null=True)
    stages = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_stages(self, run) -> list[dict]:
        rows = stages_from_context(self.context, run, selectors.agent_run_stages)
        return [{**row, "cost": money_str(row["cost"])} for row in rows]


class AgentRunInputSerializer(serializers.Serializer):
    agent = StrictCharField(help_text="An agent name (or id)")
    request = StrictCharField(max_length=20_000)
    mode = serializers.ChoiceField(choices=["sync", "async"], default="sync")
    timeout_s = StrictFloatField(required=False, min_value=0.1, max_value=600)


class AgentRunListView(APIView):
    required_scope = "query"

    @extend_schema(
        operation_id="api_v1_agent_runs_list",
        responses=list_of(AgentRunOutputSerializer),
        summary="The team's agent runs, newest first",
        parameters=[OpenApiParameter(
            "tool_outcome", str, required=False,
            description="Only runs with this label: tools_called, no_tools_found, no_tool_called, tool_failed",
        )],
    )
    def get(self, request):
        runs = selectors.agent_run_list(team=request.team, tool_outcome=request.query_params.get("tool_outcome"))
        return paginated_response(
            self, request, runs, AgentRunOutputSerializer,
            page_context=lambda runs: {
                "stages": selectors.agent_run_stages_by_run(team=request.team, run_ids=[run.pk for run in runs])
            },
        )

    @extend_schema(
        request=AgentRunInputSerializer,
        responses={200: AgentRunOutputSerializer, 202: AgentRunOutputSerializer},
        summary="Run an agent: sync waits up to timeout_s (then 202 with the run to poll); async returns 202 at once",
    )
    def post(self, request):
        data = AgentRunInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agent = find_by_name_or_id(selectors.agent_list(team=request.team), values["agent"], noun="agent")
        run = services.agent_run_start(team=request.team, agent=agent, request=values["request"],
                                       user=request.user, api_key=request_api_key(request))
        return started_run_response(run, mode=values["mode"], timeout_s=values.get("timeout_s"),
                                    wait=services.agent_run_wait, serializer_class=AgentRunOutputSerializer)


class AgentRunDetailView(APIView):
    required_scope = "query"
    required_scopes = {"GET": ("read", "query")}  # a query-only key polls the runs it started

    @extend_schema(responses=AgentRunOutputSerializer, summary="One agent run: steps, tools, tokens, cost per stage")
    def get(self, request, run_id: int):
        run = selectors.agent_run_get(team=request.team, agent_run_id=run_id)
        if only_own_runs(request) and run.api_key_id != request.auth.pk:
            raise Http404("not found")
        return Response(AgentRunOutputSerializer(run).data)
