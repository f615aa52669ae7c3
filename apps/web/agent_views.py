"""Browser pages for tools and agents: list, create, edit, delete; run an agent and watch its steps.

Thin: the active team from the session, reads through selectors, writes through services.
Viewers read; members and above create, change, delete and run.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.agents import selectors, services
from apps.agents.models import Agent, Tool
from apps.core.errors import ServiceError
from apps.corpora.selectors import corpus_list
from apps.costs.metering import endpoints_available
from apps.web.access import can, team_view
from apps.web.agent_forms import AgentForm, RunForm, ToolForm


def _apply_error(form, exc: ServiceError) -> None:
    fields = (exc.detail or {}).get("fields") or {}
    for name, message in fields.items():
        target = {"config": None}.get(name, name)
        form.add_error(target if target in form.fields else None, message)
    if not fields:
        form.add_error("name" if exc.code == "duplicate" else None, exc.message)


# --------------------------------------------------------------------------- tools


@team_view()
def tool_list(request: HttpRequest) -> HttpResponse:
    tools = selectors.tool_list(team=request.team)
    query = (request.GET.get("q") or "").strip()
    matches, status = None, 200
    if query:
        try:
            matches = services.tool_search_billed(team=request.team, query=query, k=10, user=request.user)
        except ServiceError as exc:  # a budget refused the search
            messages.error(request, exc.message)
            status = exc.http_status
    return render(request, "agents/tools.html", {
        "own_tools": [t for t in tools if t.team_id is not None],
        "global_tools": [t for t in tools if t.team_id is None],
        "query": query,
        "matches": matches,
        "can_edit": can(request, Role.MEMBER),
    }, status=status)


def _tool_form(request, data=None, initial=None) -> ToolForm:
    callables = selectors.tool_callable_names()
    return ToolForm(data, initial=initial, callables=callables, corpora=corpus_list(team=request.team))


def _tool_edit(request: HttpRequest, tool: Tool | None) -> HttpResponse:
    status = 200
    if request.method == "POST":
        form = _tool_form(request, request.POST)
        if form.is_valid():
            try:
                values = form.service_values()
                if tool is None:
                    saved = services.tool_create(team=request.team, created_by=request.user, **values)
                    messages.success(request, f"Tool '{saved.name}' created and indexed.")
                else:
                    saved = services.tool_update(tool=tool, user=request.user, **values)
                    messages.success(
                        request, f"Tool '{saved.name}' saved (version {saved.version}) and re-indexed."
                    )
                return redirect("tools")
            except ServiceError as exc:
                _apply_error(form, exc)
                status = exc.http_status
        else:
            status = 400
    else:
        initial = ToolForm.initial_for(tool) if tool else {"kind": "python", "enabled": True, "k": 3}
        form = _tool_form(request, initial=initial)
    return render(request, "agents/tool_form.html", {"form": form, "tool": tool}, status=status)


@team_view(Role.MEMBER)
def tool_create(request: HttpRequest) -> HttpResponse:
    return _tool_edit(request, None)


@team_view(Role.MEMBER)
def tool_edit(request: HttpRequest, tool_id: int) -> HttpResponse:
    return _tool_edit(request, selectors.tool_get(team=request.team, tool_id=tool_id, editable=True))


@team_view(Role.MEMBER)
@require_POST
def tool_delete(request: HttpRequest, tool_id: int) -> HttpResponse:
    tool = selectors.tool_get(team=request.team, tool_id=tool_id, editable=True)
    services.tool_delete(tool=tool)
    messages.success(request, f"Tool '{tool.name}' deleted.")
    return redirect("tools")


# --------------------------------------------------------------------------- agents


@team_view()
def agent_list(request: HttpRequest) -> HttpResponse:
    return render(request, "agents/agents.html", {
        "agents": selectors.agent_list(team=request.team),
        "runs": selectors.agent_run_list(team=request.team)[:20],
        "can_edit": can(request, Role.MEMBER),
    })


def _agent_initial(agent: Agent | None) -> dict:
    if agent is None:
        defaults = {f.name: f.get_default() for f in Agent._meta.fields}
        return {**defaults, "model_endpoint": "smollm2-135m-instruct"}
    values = {name: getattr(agent, name) for name in services.AGENT_FIELDS}
    return {**values, "name": agent.name, "model_endpoint": agent.model_endpoint.name}


def _agent_edit(request: HttpRequest, agent: Agent | None) -> HttpResponse:
    endpoints = endpoints_available(team=request.team)
    status = 200
    if request.method == "POST":
        form = AgentForm(request.POST, endpoints=endpoints)
        if form.is_valid():
            try:
                saved = services.agent_save(
                    team=request.team, name=form.cleaned_data["name"],
                    model_endpoint=form.cleaned_data["model_endpoint"], agent=agent, created_by=request.user,
                    **form.values(),
                )
                messages.success(request, f"Agent '{saved.name}' saved.")
                return redirect("agent-detail", agent_id=saved.pk)
            except ServiceError as exc:
                _apply_error(form, exc)
                status = exc.http_status
        else:
            status = 400
    else:
        form = AgentForm(initial=_agent_initial(agent), endpoints=endpoints)
    return render(request, "agents/agent_form.html", {"form": form, "agent": agent}, status=status)


@team_view(Role.MEMBER)
def agent_create(request: HttpRequest) -> HttpResponse:
    return _agent_edit(request, None)


@team_view(Role.MEMBER)
def agent_edit(request: HttpRequest, agent_id: int) -> HttpResponse:
    return _agent_edit(request, selectors.agent_get(team=request.team, agent_id=agent_id))


@team_view(Role.MEMBER)
@require_POST
def agent_delete(request: HttpRequest, agent_id: int) -> HttpResponse:
    agent = selectors.agent_get(team=request.team, agent_id=agent_id)
    services.agent_delete(agent=agent)
    messages.success(request, f"Agent '{agent.name}' deleted; its runs stay in the history.")
    return redirect("agents")


@team_view()
def agent_detail(request: HttpRequest, agent_id: int) -> HttpResponse:
    agent = selectors.agent_get(team=request.team, agent_id=agent_id)
    status = 200
    form = RunForm(request.POST or None)
    if request.method == "POST":
        if not can(request, Role.MEMBER):
            raise PermissionDenied("only the team's members and above can run agents")
        if form.is_valid():
            try:
                run = services.agent_run_start(
                    team=request.team, agent=agent, request=form.cleaned_data["request"], user=request.user
                )
                return redirect("agent-run", run_id=run.pk)
            except ServiceError as exc:
                form.add_error(None, exc.message)
                status = exc.http_status
        else:
            status = 400
    return render(request, "agents/agent_detail.html", {
        "agent": agent,
        "form": form,
        "runs": selectors.agent_run_list(team=request.team, agent=agent)[:20],
        "can_run": can(request, Role.MEMBER),
    }, status=status)


@team_view()
def agent_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = selectors.agent_run_get(team=request.team, agent_run_id=run_id)
    return render(request, "agents/run.html", _run_context(run))


@team_view()
def agent_run_live(request: HttpRequest, run_id: int) -> HttpResponse:
    """The polled fragment: steps, answer and (once finished) the cost per stage."""
    run = selectors.agent_run_get(team=request.team, agent_run_id=run_id)
    return render(request, "agents/_run_live.html", _run_context(run))


def _run_context(run) -> dict:
    return {
        "run": run,
        "subtasks": [s for s in run.steps if s.get("type") == "subtask"],
        "decomposition": next((s for s in run.steps if s.get("type") == "decompose"), None),
        "stages": selectors.agent_run_stages(run=run) if run.is_finished else [],
        "job": run.job,
    }
