"""Agent pages: tool and agent CRUD, running an agent and polling its steps; roles and team scoping."""

import pytest

from apps.agents import services
from apps.agents.indexing import tool_store
from apps.agents.models import Agent, AgentRun, Tool
from tests.apps.agents.conftest import area_script

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, alice):
    client.force_login(alice)
    return client


def test_the_agent_pages_render_and_the_nav_links_to_them(owner):
    for url in ["/agents/", "/agents/tools/", "/agents/new/", "/agents/tools/new/"]:
        assert owner.get(url).status_code == 200, url
    assert b'href="/agents/"' in owner.get("/").content


def test_a_member_creates_edits_and_deletes_a_tool_in_the_browser(owner, team_a):
    created = owner.post("/agents/tools/new/", {"name": "double", "description": "Double a number.", "kind": "python",
                                                "callable": "multiply", "method": "GET", "k": 3, "enabled": "on"})
    assert created.status_code == 302, created.content.decode()[:2000]
    tool = Tool.objects.get(team=team_a, name="double")
    assert tool_store().ids(team_a.pk) == [tool.pk]
    edited = owner.post(
        f"/agents/tools/{tool.pk}/edit/",
        {
            "name": "double",
            "description": "Multiply by two.",
            "kind": "python",
            "callable": "multiply",
            "method": "GET",
            "k": 3,
            "enabled": "on",
        },
    )
    assert edited.status_code == 302
    tool.refresh_from_db()
    assert (tool.version, tool.description) == (2, "Multiply by two.")
    listing = owner.get("/agents/tools/?q=multiply a number by two").content.decode()
    assert "<code>double</code>" in listing
    assert owner.post(f"/agents/tools/{tool.pk}/delete/").status_code == 302
    assert not Tool.objects.filter(pk=tool.pk).exists()


def test_the_tool_form_shows_the_services_errors(owner):
    response = owner.post(
        "/agents/tools/new/",
        {
            "name": "weather",
            "description": "Weather.",
            "kind": "http",
            "url": "https://nowhere.test/{city}",
            "method": "GET",
            "k": 3,
            "parameters": '{"type": "object", "properties": {"city": {"type": "string"}}}',
        },
    )
    assert response.status_code == 400
    assert "not on the allow-list" in response.content.decode()
    bad_json = owner.post("/agents/tools/new/", {"name": "x", "description": "d", "kind": "python", "callable": "add",
                                                 "method": "GET", "k": 3, "parameters": "{not json"})
    assert "not valid JSON" in bad_json.content.decode()


def test_viewers_read_but_cannot_change_tools_or_agents(client, team_a, make_agent):
    client.force_login(team_a.memberships.get(user__username="victor").user)
    assert client.get("/agents/tools/").status_code == 200
    assert client.get("/agents/tools/new/").status_code == 403
    agent = make_agent(team_a)
    assert client.get(f"/agents/{agent.pk}/").status_code == 200
    assert client.post(f"/agents/{agent.pk}/", {"request": "hi"}).status_code == 403
    assert client.post(f"/agents/{agent.pk}/delete/").status_code == 403


def test_another_teams_tools_agents_and_runs_are_404(owner, team_b, make_agent):
    theirs = services.tool_create(team=team_b, name="theirs", description="Theirs.", config={"callable": "add"})
    agent = make_agent(team_b, name="their-agent")
    run = AgentRun.objects.create(team=team_b, agent=agent, request="hi")
    assert owner.get(f"/agents/tools/{theirs.pk}/edit/").status_code == 404
    assert owner.get(f"/agents/{agent.pk}/").status_code == 404
    assert owner.get(f"/agents/runs/{run.pk}/").status_code == 404
    assert owner.get(f"/agents/runs/{run.pk}/live/").status_code == 404


def test_a_member_creates_an_agent_in_the_browser(owner, team_a):
    response = owner.post("/agents/new/", {
        "name": "calc", "model_endpoint": "smollm2-135m-instruct", "top_k": 4, "similarity_threshold": 0.3,
        "max_depth": 1, "step_limit": 6, "tool_timeout_s": 5, "max_output_tokens": 128,
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    agent = Agent.objects.get(team=team_a, name="calc")
    assert (agent.top_k, agent.step_limit) == (4, 6)


@pytest.mark.django_db(transaction=True)
def test_running_an_agent_shows_its_steps_in_the_polled_fragment(
    client, alice, team_a, builtin_tools, script, make_agent
):
    client.force_login(alice)
    agent = make_agent(team_a)
    script.say(*area_script())
    response = client.post(f"/agents/{agent.pk}/", {"request": "What is the area of a rectangle 8 m by 5 m?"})
    assert response.status_code == 302
    run = AgentRun.objects.get()
    assert response.url == f"/agents/runs/{run.pk}/"
    page = client.get(response.url).content.decode()
    assert "The area is 40 square meters." in page
    fragment = client.get(f"/agents/runs/{run.pk}/live/", HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<div id="agent-run-live"')
    assert "hx-get" not in fragment.split(">")[0]  # finished: the polling stops
    assert "<code>area_rectangle</code>" in fragment
    assert (
        "&quot;length&quot;: 8" in fragment and "= <code>40</code>" in fragment
    )  # the call, its arguments, its result
    assert "agent-step" in fragment and "tool" in fragment


def test_a_queued_run_keeps_polling(owner, team_a, make_agent):
    run = AgentRun.objects.create(team=team_a, agent=make_agent(team_a), request="hi")
    fragment = owner.get(f"/agents/runs/{run.pk}/live/").content.decode()
    assert f'hx-get="/agents/runs/{run.pk}/live/"' in fragment and 'hx-trigger="every 1s"' in fragment
