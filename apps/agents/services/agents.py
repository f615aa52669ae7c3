"""Agent definitions: validate, save and delete the agents a team runs.

An agent's name is also a ``model`` name on the OpenAI-compatible API, so it must not clash
with a pipeline or a model endpoint the team can call.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.agents.models import Agent
from apps.core.errors import ValidationFailed
from apps.costs.metering import endpoint_resolve, endpoints_available
from apps.costs.models import ModelEndpoint

AGENT_FIELDS = (
    "description", "system_prompt", "top_k", "similarity_threshold", "max_depth", "step_limit",
    "tool_timeout_s", "max_output_tokens",
)
_WHOLE_NUMBER_LIMITS = {
    "top_k": (1, 50), "max_depth": (0, 5), "step_limit": (1, 64), "max_output_tokens": (1, 32_768),
}


def agent_validate(*, values: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    for field, (low, high) in _WHOLE_NUMBER_LIMITS.items():
        if field in values and not (isinstance(values[field], int) and low <= values[field] <= high):
            errors[field] = f"{field} must be a whole number from {low} to {high}"
    if "similarity_threshold" in values and not -1 <= float(values["similarity_threshold"]) <= 1:
        errors["similarity_threshold"] = "the similarity threshold is a cosine score from -1 to 1"
    if "tool_timeout_s" in values and not 0.1 <= float(values["tool_timeout_s"]) <= 600:
        errors["tool_timeout_s"] = "the tool timeout must be from 0.1 to 600 seconds"
    if errors:
        raise ValidationFailed("; ".join(errors.values()), detail={"fields": errors})


def _check_name_free(*, team, name: str, agent: Agent | None) -> None:
    from apps.rag.models import Pipeline

    clash = Agent.objects.filter(team=team, name=name)
    if agent is not None:
        clash = clash.exclude(pk=agent.pk)
    if clash.exists():
        raise ValidationFailed(f"the team already has an agent called {name!r}", code="duplicate")
    if (
        Pipeline.objects.filter(team=team, name=name).exists()
        or endpoints_available(team=team).filter(name=name).exists()
    ):
        raise ValidationFailed(
            f"{name!r} already names a pipeline or a model: agents share the OpenAI `model` namespace",
            code="duplicate",
        )


@transaction.atomic
def agent_save(
    *,
    team,
    name: str,
    model_endpoint: ModelEndpoint | str,
    agent: Agent | None = None,
    created_by=None,
    **values: Any,
) -> Agent:
    """Create or change an agent. Its name must not clash with a pipeline or model the team can call."""
    unknown = set(values) - set(AGENT_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown agent options: {', '.join(sorted(unknown))}")
    agent_validate(values=values)
    if isinstance(model_endpoint, str):
        model_endpoint = endpoint_resolve(team=team, name=model_endpoint)
    if model_endpoint.team_id not in (None, team.pk):
        raise ValidationFailed("that model endpoint belongs to another team")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("an agent needs a name")
    _check_name_free(team=team, name=name, agent=agent)
    agent = agent or Agent(team=team, created_by=created_by if getattr(created_by, "pk", None) else None)
    agent.name = name
    agent.model_endpoint = model_endpoint
    for key, value in values.items():
        setattr(agent, key, value)
    agent.save()
    return agent


def agent_delete(*, agent: Agent) -> None:
    agent.delete()
