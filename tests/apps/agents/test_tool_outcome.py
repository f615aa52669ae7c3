"""What a run did with its tools is stored on it (AgentRun.tool_outcome), filterable and returned by REST,
so a run that needed a tool and called none, or whose tool failed, does not read as a plain success."""

import pytest

from apps.agents import selectors, services
from apps.agents.models import AgentRunStatus, ToolOutcome
from apps.core.errors import ValidationFailed
from tests.apps.agents.conftest import area_script

pytestmark = pytest.mark.django_db(transaction=True)

RECTANGLE = "What is the area of a rectangle 8 m by 5 m?"


def _start(team, agent, request=RECTANGLE):
    run = services.agent_run_start(team=team, agent=agent, request=request)
    run.refresh_from_db()
    return run


def test_a_run_that_called_its_tool_is_labelled_tools_called(team_a, builtin_tools, script, make_agent):
    script.say(*area_script())
    run = _start(team_a, make_agent(team_a))
    assert run.status == AgentRunStatus.SUCCEEDED, run.error
    assert run.tool_outcome == ToolOutcome.TOOLS_CALLED
    assert not run.tool_outcome_warns


def test_a_run_offered_tools_that_called_none_is_labelled_no_tool_called(team_a, builtin_tools, script, make_agent):
    # The echo double ignores the grammar, as an unconstrained model would: it answers from its own arithmetic.
    script.say("1. Calculate the area of the rectangle", '{"answer": "41"}', '{"answer": "41"}')
    run = _start(team_a, make_agent(team_a))
    assert run.status == AgentRunStatus.SUCCEEDED, run.error  # it finished...
    assert run.answer == "41"
    assert "area_rectangle" in run.tools_offered and run.tools_called == []
    assert run.tool_outcome == ToolOutcome.NO_TOOL_CALLED  # ...but not as a plain success
    assert run.tool_outcome_warns


def test_a_run_whose_tool_failed_is_labelled_tool_failed(team_a, builtin_tools, script, make_agent):
    script.say(
        "1. Divide 10 by 0",
        '{"tool": "divide", "arguments": {"a": 10, "b": 0}}',
        '{"answer": "It cannot be divided."}',
    )
    run = _start(team_a, make_agent(team_a), request="Divide 10 by 0")
    assert run.status == AgentRunStatus.SUCCEEDED, run.error
    assert run.tools_called == ["divide"]
    error = run.steps[1]["calls"][0]["tool_calls"][0]["error"]
    assert "division by zero" in error
    assert run.tool_outcome == ToolOutcome.TOOL_FAILED
    assert run.tool_outcome_warns


def test_runs_are_filtered_by_tool_outcome_and_rest_returns_it(team_a, builtin_tools, script, make_agent,
                                                               api_client, make_api_key):
    agent = make_agent(team_a)
    script.say(*area_script())
    good = _start(team_a, agent)
    script.say("1. Calculate the area of the rectangle", '{"answer": "41"}', '{"answer": "41"}')
    unsupported = _start(team_a, agent)
    assert list(selectors.agent_run_list(team=team_a, tool_outcome="no_tool_called")) == [unsupported]
    assert list(selectors.agent_run_list(team=team_a, tool_outcome="tools_called")) == [good]
    with pytest.raises(ValidationFailed):
        selectors.agent_run_list(team=team_a, tool_outcome="fine")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a).raw_key}")
    body = api_client.get("/api/v1/agent-runs?tool_outcome=no_tool_called").json()
    assert [(r["id"], r["tool_outcome"]) for r in body["results"]] == [(unsupported.pk, "no_tool_called")]
    assert api_client.get("/api/v1/agent-runs?tool_outcome=fine").status_code == 400


def test_the_run_page_and_the_run_list_flag_a_run_that_called_no_tool(client, alice, team_a, builtin_tools, script,
                                                                       make_agent):
    agent = make_agent(team_a)
    script.say("1. Calculate the area of the rectangle", '{"answer": "41"}', '{"answer": "41"}')
    run = _start(team_a, agent)
    client.force_login(alice)
    page = client.get(f"/agents/runs/{run.pk}/").content.decode()
    assert 'id="tool-outcome"' in page and "needed a tool, called none" in page
    assert "none was called" in page
    listing = client.get(f"/agents/{agent.pk}/").content.decode()
    assert "needed a tool, called none" in listing
    script.say(*area_script())
    fine = _start(team_a, agent)
    assert 'id="tool-outcome"' not in client.get(f"/agents/runs/{fine.pk}/").content.decode()
