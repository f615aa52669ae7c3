"""The official `openai` client against a live server, `model` = an agent (scripted echo model)."""

from decimal import Decimal

import openai
import pytest

from apps.agents.models import AgentRun
from apps.costs.models import Stage, UsageRecord
from apps.costs.services import budget_save
from tests.apps.agents.conftest import area_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(live_server, team_a, make_api_key, builtin_tools, make_agent):
    make_agent(team_a, name="calc")
    key = make_api_key(team_a, scopes=["read", "query"])
    return openai.OpenAI(api_key=key.raw_key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=120)


def _ledger_steps(run_id):
    return UsageRecord.objects.filter(agent_run_id=run_id, stage=Stage.AGENT_STEP)


def test_a_chat_completion_with_an_agents_name_runs_the_agent(client, script):
    script.say(*area_script())
    completion = client.chat.completions.create(
        model="calc", messages=[{"role": "user", "content": "What is the area of a rectangle 8 m by 5 m?"}]
    )
    assert completion.choices[0].message.content == "The area is 40 square meters."
    assert completion.choices[0].finish_reason == "stop"
    run = AgentRun.objects.get(pk=int(completion.id.removeprefix("chatcmpl-agent-")))
    steps = _ledger_steps(run.pk)
    assert completion.usage.prompt_tokens == sum(r.prompt_tokens for r in steps) > 0
    assert completion.usage.completion_tokens == sum(r.completion_tokens for r in steps)
    assert run.tools_called == ["area_rectangle"]
    assert completion.model_extra["parsimony"]["tool_outcome"] == "tools_called"


def test_the_agent_streams_and_reports_usage_from_the_ledger(client, script):
    script.say(
        "1. Calculate the area of the rectangle\n2. Take the square root of the area",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 2}}',
        '{"answer": "16"}',
        '{"tool": "sqrt", "arguments": {"number": 16}}',
        '{"answer": "4"}',
        "The square root of the area is 4.",
    )
    stream = client.chat.completions.create(
        model="calc", messages=[{"role": "user", "content": "Area of an 8 by 2 rectangle, then its square root?"}],
        stream=True, stream_options={"include_usage": True},
    )
    pieces, usage, run_id = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
            run_id = int(chunk.id.removeprefix("chatcmpl-agent-"))
    assert "".join(pieces) == "The square root of the area is 4."
    steps = _ledger_steps(run_id)
    assert steps.count() == 6
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        sum(r.prompt_tokens for r in steps), sum(r.completion_tokens for r in steps)
    )


def test_an_exhausted_budget_is_a_402_for_the_agent_too(client, team_a, script):
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="calc", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 402
    assert raised.value.body["code"] == "budget_exceeded"


def test_the_models_list_names_the_agent(client):
    models = {m.id: m for m in client.models.list().data}
    assert "calc" in models
