"""An agent called with a conversation (/v1, the official client) reads the earlier turns when it answers."""

import openai
import pytest

from apps.agents.models import AgentRun
from tests.support.prompts import prompts_record

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sent(monkeypatch):
    return prompts_record(monkeypatch)


def test_an_agent_reads_the_earlier_turns_of_the_conversation(
    live_server, team_a, make_api_key, builtin_tools, make_agent, script, sent
):
    make_agent(team_a, name="calc")
    key = make_api_key(team_a, scopes=["read", "query"])
    client = openai.OpenAI(api_key=key.raw_key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=120)
    script.say(
        "1. Calculate the area of the rectangle\n2. Take the square root of the area",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 2}}',
        '{"answer": "16"}',
        '{"tool": "sqrt", "arguments": {"number": 16}}',
        '{"answer": "4"}',
        "The square root of the area is 4, Ada.",
    )
    history = [{"role": "user", "content": "My name is Ada; call me by it."},
               {"role": "assistant", "content": "Noted, Ada."}]
    completion = client.chat.completions.create(model="calc", messages=[
        *history, {"role": "user", "content": "Area of an 8 by 2 rectangle, then its square root?"}])
    assert completion.choices[0].message.content == "The square root of the area is 4, Ada."
    run = AgentRun.objects.get(pk=int(completion.id.removeprefix("chatcmpl-agent-")))
    assert run.request == "Area of an 8 by 2 rectangle, then its square root?" and len(run.messages) == 3
    answer_prompt = sent[-1]  # the answer's composition
    assert answer_prompt[1:3] == history and answer_prompt[-1]["role"] == "user"
    assert "Area of an 8 by 2 rectangle" in answer_prompt[-1]["content"]
