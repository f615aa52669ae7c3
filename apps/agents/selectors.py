"""Reads for tools, agents and agent runs. A team sees its own tools and the global ones.

Pages read the engine's tool registries (built-in callables, HTTP methods) through here, never
from ``workers`` themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet, Sum

from apps.agents.models import Agent, AgentRun, HttpAllowedHost, Tool, ToolOutcome
from apps.core.errors import ValidationFailed
from apps.core.scoping import team_object_or_404, team_scoped
from apps.costs.models import UsageRecord


def tool_list(*, team, include_global: bool = True, enabled: bool | None = None) -> QuerySet[Tool]:
    """The tools a team's agents can use: its own, plus the global library (team=None)."""
    if team is None:
        tools = Tool.objects.filter(team=None) if include_global else Tool.objects.none()
    elif include_global:
        tools = Tool.objects.filter(Q(team=team) | Q(team=None))
    else:
        tools = team_scoped(Tool, team)
    if enabled is not None:
        tools = tools.filter(enabled=enabled)
    return tools.select_related("team")


def tool_get(*, team, tool_id: int, editable: bool = False) -> Tool:
    """One visible tool (404 otherwise); ``editable``: only the team's own (global ones are read-only)."""
    tools = tool_list(team=team, include_global=not editable)
    return team_object_or_404(tools, team, pk=tool_id) if editable else _get_or_404(tools, pk=tool_id)


def _get_or_404(queryset, **lookup):
    from django.http import Http404

    try:
        return queryset.get(**lookup)
    except (Tool.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("not found") from exc


def http_allowed_hosts() -> list[str]:
    return list(HttpAllowedHost.objects.values_list("host", flat=True))


def tool_http_methods() -> tuple[str, ...]:
    """The HTTP methods an http tool may use (the engine's ``workers.agent.http_tool.METHODS``)."""
    from workers.agent.http_tool import METHODS

    return tuple(METHODS)


def tool_callable_names() -> list[str]:
    """The built-in callables a python tool may run, by name (``workers.agent.tools``)."""
    from workers.agent.tools import callable_names

    return list(callable_names())


@dataclass(frozen=True)
class ToolMatch:
    tool: Tool
    score: float


def tool_search(*, team, query: str, k: int = 5, timings: dict | None = None) -> list[ToolMatch]:
    """The k enabled tools (the team's and global) nearest to ``query``, best first, with cosine scores.

    The index may hold a vector whose row is gone or disabled (a rolled-back change): rows are
    re-checked here. A team tool shadows a global tool of the same name.
    """
    from apps.agents import indexing

    if not (query or "").strip() or k < 1:
        return []
    vector, embed_s = indexing.embed_query(query)
    started = time.perf_counter()
    pairs = indexing.tool_store().search_vector(vector, scopes=indexing.team_scopes(team), k=k * 2 + 4)
    found = tool_list(team=team, enabled=True).filter(pk__in=[pk for pk, _ in pairs])
    rows = {tool.pk: tool for tool in found}
    matches: list[ToolMatch] = []
    names: dict[str, int] = {}
    for pk, score in pairs:
        tool = rows.get(pk)
        if tool is None:
            continue
        if tool.name in names:
            if tool.team_id is not None:  # the team's own wins over the global one
                shadowed = matches[names[tool.name]]
                matches[names[tool.name]] = ToolMatch(tool=tool, score=max(score, shadowed.score))
            continue
        names[tool.name] = len(matches)
        matches.append(ToolMatch(tool=tool, score=float(score)))
    if timings is not None:
        timings["embed_s"] = embed_s
        timings["search_s"] = time.perf_counter() - started
    return matches[:k]


def agent_list(*, team) -> QuerySet[Agent]:
    return team_scoped(Agent, team).select_related("model_endpoint")


def agent_get(*, team, agent_id: int) -> Agent:
    return team_object_or_404(agent_list(team=team), team, pk=agent_id)


def agent_by_name(*, team, name: str) -> Agent | None:
    return agent_list(team=team).filter(name=name).first()


def agent_run_list(
    *, team, agent: Agent | None = None, user=None, tool_outcome: str | None = None
) -> QuerySet[AgentRun]:
    """The team's runs, newest first; ``tool_outcome``: only runs with that label (``ToolOutcome``)."""
    runs = team_scoped(AgentRun, team).select_related("agent", "user", "api_key")
    if agent is not None:
        runs = runs.filter(agent=agent)
    if tool_outcome:
        if tool_outcome not in ToolOutcome.values:
            raise ValidationFailed(
                f"unknown tool_outcome {tool_outcome!r} (valid: {', '.join(ToolOutcome.values)})"
            )
        runs = runs.filter(tool_outcome=tool_outcome)
    if user is not None:
        runs = runs.filter(user=user)
    return runs


def agent_run_get(*, team, agent_run_id: int) -> AgentRun:
    return team_object_or_404(agent_run_list(team=team), team, pk=agent_run_id)


def agent_run_stages(*, run: AgentRun) -> list[dict]:
    """Calls, tokens, cost and latency per stage of one run, from the ledger."""
    return agent_run_stages_by_run(team=run.team_id, run_ids=[run.pk]).get(run.pk, [])


def agent_run_stages_by_run(*, team, run_ids: list[int]) -> dict[int, list[dict]]:
    """``agent_run_stages`` of several runs in one query (a list page), keyed by run id."""
    rows = (
        UsageRecord.objects.filter(team=team, agent_run_id__in=run_ids)
        .values("agent_run_id", "stage")
        .annotate(
            calls=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
            latency_ms=Sum("latency_ms"),
        )
        .order_by("stage")
    )
    order = {"agent-step": 0, "retrieve": 1, "tool": 2}
    by_run: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda row: order.get(row["stage"], 9)):
        by_run.setdefault(row.pop("agent_run_id"), []).append(row)
    return by_run


def agent_run_usage(*, run: AgentRun) -> dict[str, int]:
    """prompt/completion tokens of the run's model calls, straight from the ledger."""
    totals = UsageRecord.objects.filter(team=run.team, agent_run_id=run.pk, stage="agent-step").aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return {"prompt_tokens": totals["prompt"] or 0, "completion_tokens": totals["completion"] or 0}
