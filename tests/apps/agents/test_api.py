"""REST: tools, agents and agent runs; scopes; another team's objects are 404."""

import pytest

from apps.agents.models import Tool
from tests.apps.agents.conftest import area_script

pytestmark = pytest.mark.django_db(transaction=True)


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.fixture
def admin_client(api_client, team_a, make_api_key):
    return _client(api_client, make_api_key(team_a, scopes=["admin"]))


def test_it_creates_changes_and_deletes_a_tool(admin_client):
    created = admin_client.post("/api/v1/tools", {"name": "double", "description": "Double a number.",
                                                   "kind": "python", "config": {"callable": "multiply"}}, format="json")
    assert created.status_code == 201, created.json()
    tool = created.json()
    assert (tool["version"], tool["is_global"], tool["parameters"]["required"]) == (1, False, ["a", "b"])
    changed = admin_client.patch(
        f"/api/v1/tools/{tool['id']}", {"description": "Multiply a number by two."}, format="json"
    )
    assert changed.json()["version"] == 2
    assert admin_client.get("/api/v1/tools").json()["count"] == 1
    bad = admin_client.post(
        "/api/v1/tools", {"name": "x", "description": "d", "config": {"callable": "nope"}}, format="json"
    )
    assert bad.status_code == 400
    assert (
        bad.json()["error"]["code"] == "validation_failed"
        and "unknown built-in callable" in bad.json()["error"]["message"]
    )
    assert admin_client.delete(f"/api/v1/tools/{tool['id']}").status_code == 204
    assert not Tool.objects.exists()


def test_another_teams_tools_and_agents_are_404_and_global_tools_read_only(
    admin_client, team_b, builtin_tools, make_agent
):
    from apps.agents.services import tool_create

    theirs = tool_create(team=team_b, name="theirs", description="Theirs.", config={"callable": "add"})
    their_agent = make_agent(team_b, name="their-agent")
    assert admin_client.get(f"/api/v1/tools/{theirs.pk}").status_code == 404
    assert admin_client.patch(f"/api/v1/tools/{theirs.pk}", {"description": "mine"}, format="json").status_code == 404
    assert admin_client.delete(f"/api/v1/tools/{theirs.pk}").status_code == 404
    assert admin_client.get(f"/api/v1/agents/{their_agent.pk}").json()["error"]["code"] == "not_found"
    add = Tool.objects.get(name="add")
    assert admin_client.get(f"/api/v1/tools/{add.pk}").json()["is_global"] is True
    assert admin_client.delete(f"/api/v1/tools/{add.pk}").status_code == 404
    listed = admin_client.get("/api/v1/tools?limit=200").json()
    assert listed["count"] == 104 and "theirs" not in [t["name"] for t in listed["results"]]


def test_scopes_apply_to_tools_agents_and_runs(api_client, team_a, make_api_key):
    reader = _client(api_client, make_api_key(team_a, scopes=["read"]))
    assert reader.get("/api/v1/tools").status_code == 200
    denied = reader.post("/api/v1/tools", {"name": "x", "description": "d"}, format="json")
    assert denied.status_code == 403 and "'admin' scope" in denied.json()["error"]["message"]
    assert (
        reader.post(
            "/api/v1/agents", {"name": "a", "model": "smollm2-135m-instruct"}, format="json"
        ).status_code
        == 403
    )
    assert reader.post("/api/v1/agent-runs", {"agent": "a", "request": "hi"}, format="json").status_code == 403


def test_it_manages_agents_and_refuses_names_taken_by_models(admin_client):
    created = admin_client.post(
        "/api/v1/agents", {"name": "calc", "model": "smollm2-135m-instruct", "top_k": 3}, format="json"
    )
    assert created.status_code == 201, created.json()
    agent = created.json()
    assert (agent["top_k"], agent["model"], agent["step_limit"]) == (3, "smollm2-135m-instruct", 8)
    patched = admin_client.patch(f"/api/v1/agents/{agent['id']}", {"step_limit": 4}, format="json")
    assert patched.json()["step_limit"] == 4
    clash = admin_client.post(
        "/api/v1/agents", {"name": "smollm2-135m-instruct", "model": "smollm2-135m-instruct"}, format="json"
    )
    assert clash.status_code == 400 and "OpenAI `model` namespace" in clash.json()["error"]["message"]
    bad = admin_client.post(
        "/api/v1/agents", {"name": "b", "model": "smollm2-135m-instruct", "top_k": 0}, format="json"
    )
    assert bad.status_code == 400 and "top_k" in bad.json()["error"]["message"]
    assert admin_client.delete(f"/api/v1/agents/{agent['id']}").status_code == 204


def test_a_run_over_rest_returns_steps_tools_and_cost_per_stage(
    api_client, team_a, make_api_key, builtin_tools, script, make_agent
):
    make_agent(team_a)
    client = _client(api_client, make_api_key(team_a))
    script.say(*area_script())
    response = client.post(
        "/api/v1/agent-runs", {"agent": "calc", "request": "Area of a rectangle 8 by 5?"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "succeeded" and body["answer"] == "The area is 40 square meters."
    assert body["tools_called"] == ["area_rectangle"]
    stages = {row["stage"]: row for row in body["stages"]}
    assert stages["agent-step"]["calls"] == 3 and stages["tool"]["calls"] == 1
    assert client.get(f"/api/v1/agent-runs/{body['id']}").json()["steps"] == body["steps"]
    unknown = client.post("/api/v1/agent-runs", {"agent": "nope", "request": "hi"}, format="json")
    assert unknown.status_code == 400 and "available: calc" in unknown.json()["error"]["message"]


def test_a_run_over_rest_is_402_when_the_budget_is_spent(api_client, team_a, make_api_key, make_agent):
    from decimal import Decimal

    from apps.costs.services import budget_save

    make_agent(team_a)
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    response = _client(api_client, make_api_key(team_a)).post(
        "/api/v1/agent-runs", {"agent": "calc", "request": "hi"}, format="json"
    )
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"


def test_another_teams_runs_are_404(api_client, team_a, team_b, make_api_key, builtin_tools, script, make_agent):
    from apps.agents.services import agent_run_start

    script.say(*area_script())
    run = agent_run_start(team=team_b, agent=make_agent(team_b), request="Area of 8 by 5?")
    client = _client(api_client, make_api_key(team_a))
    assert client.get(f"/api/v1/agent-runs/{run.pk}").status_code == 404
    assert client.get("/api/v1/agent-runs").json()["count"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "t", "description": "d", "kind": "python", "config": {"callable": [1]}},
        {"name": "t", "description": "d", "kind": "python", "config": "callable"},
        {"name": "t", "description": "d", "kind": "http", "config": {"url": "http://[::1"}},
        {"name": "t", "description": "d", "kind": "http", "config": {"url": "https://a.test/{", "method": 5}},
        {"name": "t", "description": "d", "kind": "retrieval", "config": {"corpus_id": 10**30, "k": "many"}},
        {"name": "t", "description": "d", "kind": "retrieval", "config": {"corpus_id": "1; drop"}},
        {"name": "t", "description": "d", "kind": "http", "config": {"url": "https://a.test/"},
         "parameters": {"type": "object", "required": 5, "properties": {"x": 1}}},
        {"name": "t", "description": "d", "kind": "python", "config": {"callable": "add"},
         "parameters": {"type": "object", "properties": {"a": "number"}}},
    ],
)
def test_malformed_tool_definitions_are_400_never_500(admin_client, payload):
    response = admin_client.post("/api/v1/tools", payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_failed"
