"""Agent runs end to end through the worker path, with a scripted (echo) model: metering, budgets, steps."""

import json
from decimal import Decimal

import httpx
import pytest

from apps.agents import services
from apps.agents.models import AgentRun, AgentRunStatus
from apps.costs import metering
from apps.costs.models import ModelEndpoint, Reservation, Stage, UsageRecord
from apps.costs.services import BudgetExceeded, budget_save
from tests.apps.agents.conftest import area_script

pytestmark = pytest.mark.django_db(transaction=True)


def _start(team, agent, request="What is the area of a rectangle 8 m by 5 m?", **kwargs):
    run = services.agent_run_start(team=team, agent=agent, request=request, **kwargs)
    run.refresh_from_db()
    return run


def test_a_run_answers_and_meters_every_model_and_tool_call(team_a, alice, builtin_tools, script, make_agent):
    script.say(*area_script())
    run = _start(team_a, make_agent(team_a), user=alice)
    assert run.status == AgentRunStatus.SUCCEEDED, run.error
    assert run.answer == "The area is 40 square meters."
    assert run.tools_called == ["area_rectangle"]
    assert "area_rectangle" in run.tools_offered
    ledger = UsageRecord.objects.filter(agent_run_id=run.pk)
    stages = sorted(ledger.values_list("stage", flat=True))
    assert stages == [Stage.AGENT_STEP] * 3 + [Stage.RETRIEVE] + [Stage.TOOL]
    tool_row = ledger.get(stage=Stage.TOOL)
    assert (tool_row.model_name, tool_row.finish_reason, tool_row.user) == ("tool/area_rectangle", "ok", alice)
    assert tool_row.latency_ms >= 0 and tool_row.price.model_name == "local/agent-tools"
    steps = ledger.filter(stage=Stage.AGENT_STEP)
    assert run.prompt_tokens == sum(r.prompt_tokens for r in steps) > 0
    assert run.completion_tokens == sum(r.completion_tokens for r in steps)
    assert run.cost == sum(r.cost for r in ledger)
    assert run.model_calls == 3
    # One hold per step (the first one reserved when the run started), each settled to its rows.
    holds = Reservation.objects.filter(pk__in=ledger.values("reservation_id"))
    assert run.reservation_id in {h.pk for h in holds} and holds.count() == 3
    assert all(h.status == "settled" for h in holds) and sum(h.actual for h in holds) == run.cost
    assert run.job.status == "succeeded" and run.job.queue == "gpu"
    call = run.steps[1]["calls"][0]["tool_calls"][0]
    assert call["result"] == 40 and call["arguments"] == {"length": 8, "width": 5}
    json.dumps(run.steps)


def test_only_the_tools_found_reach_the_models_prompt(team_a, builtin_tools, script, make_agent, monkeypatch):
    prompts = []
    real = metering.model_call

    def spy(**kwargs):
        prompts.append(kwargs["messages"][-1]["content"])
        return real(**kwargs)

    monkeypatch.setattr("apps.agents.services.runs.model_call", spy)
    script.say(*area_script())
    run = _start(team_a, make_agent(team_a, top_k=3))
    step_prompt = prompts[1]
    offered = run.steps[1]["tools_offered"]
    assert 1 <= len(offered) <= 3
    for name in offered:
        assert f'"name": "{name}"' in step_prompt
    assert step_prompt.count('"name": ') == len(offered)  # nothing else of the 104 tools
    assert "volume_of_torus" not in step_prompt


def test_an_exhausted_budget_refuses_the_run_with_402(team_a, builtin_tools, script, make_agent):
    budget_save(team=team_a, hard_limit=Decimal("0.000001"), period="month")
    agent = make_agent(team_a)
    with pytest.raises(BudgetExceeded) as refused:
        services.agent_run_start(team=team_a, agent=agent, request="Area of 8 by 5?")
    assert refused.value.http_status == 402
    assert not AgentRun.objects.exists()
    assert script.endpoints == []  # no model was called


def test_the_reservation_covers_step_limit_worst_case_calls(team_a, make_agent):
    small = services.agent_run_worst_case(agent=make_agent(team_a, name="a1", step_limit=2), request="x")
    large = services.agent_run_worst_case(agent=make_agent(team_a, name="a2", step_limit=8), request="x")
    assert large > 3 * small > 0


def test_the_step_limit_ends_a_run_that_keeps_calling_tools(team_a, builtin_tools, script, make_agent):
    calls = [f'{{"tool": "area_rectangle", "arguments": {{"length": {n}, "width": 5}}}}' for n in range(1, 10)]
    script.say("1. Calculate the area of the rectangle", *calls)
    run = _start(team_a, make_agent(team_a, step_limit=3))
    assert run.status == AgentRunStatus.SUCCEEDED
    assert run.finish_reason == "step_limit"
    assert run.model_calls == 3
    assert UsageRecord.objects.filter(agent_run_id=run.pk, stage=Stage.AGENT_STEP).count() == 3
    assert run.answer.startswith("Stopped at the step limit (3 model calls).")


def test_a_failing_model_fails_the_run_and_releases_the_hold(team_a, builtin_tools, monkeypatch, make_agent):
    from workers.runtime.meter import EchoTarget

    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(fail_with="endpoint down"))
    run = _start(team_a, make_agent(team_a))
    assert run.status == AgentRunStatus.FAILED
    assert "endpoint down" in run.error
    assert Reservation.objects.get(pk=run.reservation_id).status == "released"


def test_an_http_tool_is_refused_once_its_host_leaves_the_allow_list(team_a):
    from apps.agents.models import HttpAllowedHost
    from workers.agent.http_tool import HttpToolError

    services.http_host_allow(host="api.weather.test")
    tool = services.tool_create(
        team=team_a, name="weather", description="The weather in a city.", kind="http",
        config={"url": "https://api.weather.test/{city}"},
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    HttpAllowedHost.objects.all().delete()
    call = services.tool_callable(tool=tool)
    with pytest.raises(HttpToolError, match="not on the allow-list"):
        call({"city": "Paris"})


def test_an_http_tool_never_reaches_a_private_address_even_when_allow_listed(team_a, settings):
    from workers.agent.http_tool import HttpToolError

    services.http_host_allow(host="169.254.169.254")
    tool = services.tool_create(
        team=team_a, name="metadata", description="Instance metadata.", kind="http",
        config={"url": "http://169.254.169.254/latest/{path}"},
        parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    )
    call = services.tool_callable(tool=tool)
    with pytest.raises(HttpToolError, match="refused by the network policy: 169.254.169.254 is a private"):
        call({"path": "meta-data"})


def test_an_openai_endpoint_agent_uses_native_tool_calling(team_a, builtin_tools, monkeypatch, make_agent):
    from apps.costs.services import price_set
    from workers.runtime.openai_compat import OpenAICompatClient, OpenAICompatConfig

    price_set(model_name="test/remote", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))
    ModelEndpoint.objects.create(name="remote", kind="openai", base_url="http://llm.test/v1", price_name="test/remote")
    payloads = []
    replies = [
        {"content": "1. Calculate the area of the rectangle"},
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "area_rectangle", "arguments": '{"length": 8, "width": 5}'},
                }
            ],
        },
        {"content": "The area is 40."},
    ]

    def handler(request):
        payloads.append(json.loads(request.content))
        message = replies.pop(0)
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", **message}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 5},
            },
        )

    client = OpenAICompatClient(
        OpenAICompatConfig(base_url="http://llm.test/v1", model="m"), transport=httpx.MockTransport(handler)
    )
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: client)
    run = _start(team_a, make_agent(team_a, model="remote"))
    assert run.status == AgentRunStatus.SUCCEEDED, run.error
    assert run.answer == "The area is 40."
    assert "tools" not in payloads[0]  # decomposition offers no tools
    offered = [t["function"]["name"] for t in payloads[1]["tools"]]
    assert "area_rectangle" in offered and len(offered) <= 5
    assert payloads[2]["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "40"}
    assert run.prompt_tokens == 150 and run.completion_tokens == 15


def test_a_retrieval_tool_searches_the_teams_corpus_on_its_own_thread(team_a, alice, script, make_agent):
    from apps.corpora.services import corpus_create, document_upload, documents_ingest

    corpus = corpus_create(team=team_a, name="Handbook", user=alice, chunk_tokens=64, overlap_tokens=8)
    text = b"Zebras are African equines with black-and-white stripes. Their stripes may deter biting flies."
    documents_ingest(
        documents=[
            document_upload(corpus=corpus, filename="zebra.txt", data=text, user=alice, start_job=False)
        ]
    )
    services.tool_create(team=team_a, name="handbook", kind="retrieval", config={"corpus_id": corpus.pk, "k": 2},
                         description="Search the animal handbook: zebras, their stripes and habits.")
    script.say(
        "1. Find out what zebra stripes are for",
        '{"tool": "handbook", "arguments": {"query": "zebra stripes"}}',
        '{"answer": "They may deter biting flies."}',
    )
    run = _start(team_a, make_agent(team_a), request="What are zebra stripes for?")
    call = run.steps[1]["calls"][0]["tool_calls"][0]
    assert call["error"] is None, call
    assert "deter biting flies" in call["result"][0]["text"]
    assert run.answer == "They may deter biting flies."
