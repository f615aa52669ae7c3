"""Tool CRUD through the services: validation, versions, re-indexing on every change, team scoping."""

import pytest
from django.core.management import call_command
from django.http import Http404

from apps.agents import selectors, services
from apps.agents.indexing import tool_store
from apps.agents.models import Tool, ToolKind
from apps.core.errors import ValidationFailed

pytestmark = pytest.mark.django_db

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _names(matches):
    return [m.tool.name for m in matches]


def test_it_creates_a_tool_and_the_search_finds_it(team_a, alice):
    tool = services.tool_create(
        team=team_a,
        name="stock_price",
        description="Look up the current price of a stock ticker.",
        kind=ToolKind.PYTHON,
        config={"callable": "calculator"},
        created_by=alice,
    )
    assert tool.version == 1 and tool.parameters["required"] == ["expression"]  # the callable's schema by default
    assert tool_store().ids(team_a.pk) == [tool.pk]
    matches = selectors.tool_search(team=team_a, query="what does a share of ACME cost now?", k=3)
    assert _names(matches) == ["stock_price"]
    assert 0 < matches[0].score <= 1


def test_every_change_reindexes_the_tool_and_bumps_its_version(team_a):
    tool = services.tool_create(team=team_a, name="helper", description="Convert miles to kilometres.",
                                config={"callable": "multiply"})
    before = selectors.tool_search(team=team_a, query="translate a sentence into French", k=1)[0].score
    tool = services.tool_update(tool=tool, description="Translate a sentence into French.")
    assert tool.version == 2
    after = selectors.tool_search(team=team_a, query="translate a sentence into French", k=1)[0].score
    assert after > before + 0.2
    assert services.tool_update(tool=tool, description="Translate a sentence into French.").version == 2  # no change
    tool = services.tool_update(tool=tool, enabled=False)
    assert tool.version == 3
    assert tool_store().ids(team_a.pk) == []
    assert selectors.tool_search(team=team_a, query="translate a sentence into French", k=3) == []
    services.tool_update(tool=tool, enabled=True)
    assert tool_store().ids(team_a.pk) == [tool.pk]


def test_a_deleted_tool_leaves_the_index(team_a):
    tool = services.tool_create(team=team_a, name="helper", description="Convert miles to kilometres.",
                                config={"callable": "multiply"})
    services.tool_delete(tool=tool)
    assert tool_store().ids(team_a.pk) == []
    assert not Tool.objects.exists()


def test_it_validates_each_kind_and_names_what_is_wrong(team_a, team_b):
    from apps.corpora.services import corpus_create

    with pytest.raises(ValidationFailed, match="unknown built-in callable 'rm_rf'"):
        services.tool_create(team=team_a, name="x", description="d", config={"callable": "rm_rf"})
    with pytest.raises(ValidationFailed, match="host 'api.weather.test' is not on the allow-list"):
        services.tool_create(team=team_a, name="weather", description="Weather.", kind="http",
                             config={"url": "https://api.weather.test/{city}"}, parameters=WEATHER)
    services.http_host_allow(host="api.weather.test")
    weather = services.tool_create(team=team_a, name="weather", description="Weather.", kind="http",
                                   config={"url": "https://api.weather.test/{city}"}, parameters=WEATHER)
    assert weather.config == {"url": "https://api.weather.test/{city}", "method": "GET"}
    with pytest.raises(ValidationFailed, match="URL placeholders without a parameter: town"):
        services.tool_create(team=team_a, name="w2", description="Weather.", kind="http",
                             config={"url": "https://api.weather.test/{town}"}, parameters=WEATHER)
    other = corpus_create(team=team_b, name="B's notes")
    with pytest.raises(ValidationFailed, match="one of the team's corpora"):
        services.tool_create(team=team_a, name="notes", description="Search notes.", kind="retrieval",
                             config={"corpus_id": other.pk})
    with pytest.raises(ValidationFailed, match='"type": "object"'):
        services.tool_create(team=team_a, name="y", description="d", kind="http",
                             config={"url": "https://api.weather.test/"}, parameters={"type": "string"})
    with pytest.raises(ValidationFailed, match="starts with a letter"):
        services.tool_create(team=team_a, name="bad name!", description="d", config={"callable": "add"})
    with pytest.raises(ValidationFailed, match="already has a tool called 'weather'"):
        services.tool_create(team=team_a, name="weather", description="again", config={"callable": "add"})


def test_a_retrieval_tool_gets_the_query_schema(team_a):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team_a, name="Handbook")
    tool = services.tool_create(team=team_a, name="handbook", description="Search the handbook.", kind="retrieval",
                                config={"corpus_id": corpus.pk})
    assert tool.parameters["required"] == ["query"]
    assert tool.config == {"corpus_id": corpus.pk, "k": 3, "retriever": "hybrid"}


def test_another_teams_tools_are_invisible(team_a, team_b):
    mine = services.tool_create(team=team_a, name="secret_sauce", description="Compute the secret sauce recipe.",
                                config={"callable": "add"})
    theirs = services.tool_create(team=team_b, name="their_sauce", description="Compute the secret sauce recipe.",
                                  config={"callable": "add"})
    assert _names(selectors.tool_search(team=team_a, query="secret sauce recipe", k=5)) == ["secret_sauce"]
    assert _names(selectors.tool_search(team=team_b, query="secret sauce recipe", k=5)) == ["their_sauce"]
    assert list(selectors.tool_list(team=team_a)) == [mine]
    with pytest.raises(Http404):
        selectors.tool_get(team=team_a, tool_id=theirs.pk)


def test_global_tools_are_visible_to_every_team_but_editable_by_none(team_a, team_b, builtin_tools):
    assert builtin_tools == {"created": 104, "updated": 0, "unchanged": 0}
    for team in (team_a, team_b):
        assert _names(selectors.tool_search(team=team, query="area of a rectangle 8 by 5 meters", k=1)) == [
            "area_rectangle"
        ]
    area = Tool.objects.get(name="area_rectangle")
    assert selectors.tool_get(team=team_a, tool_id=area.pk) == area
    with pytest.raises(Http404):
        selectors.tool_get(team=team_a, tool_id=area.pk, editable=True)


def test_a_team_tool_shadows_a_global_tool_of_the_same_name(team_a, builtin_tools):
    own = services.tool_create(team=team_a, name="area_rectangle", description="Area of a rectangle, in acres.",
                               config={"callable": "area_rectangle"})
    matches = selectors.tool_search(team=team_a, query="area of a rectangle", k=5)
    assert _names(matches).count("area_rectangle") == 1
    assert next(m.tool for m in matches if m.tool.name == "area_rectangle") == own


def test_loading_the_built_in_tools_is_idempotent_and_refreshes_changed_ones(builtin_tools):
    from apps.agents.services import builtin_tools_load

    assert builtin_tools_load() == {"created": 0, "updated": 0, "unchanged": 104}
    add = Tool.objects.get(name="add", team=None)
    add.description = "stale"
    add.save()
    assert builtin_tools_load(packs=["math"]) == {"created": 0, "updated": 1, "unchanged": 99}
    add.refresh_from_db()
    assert add.description == "Add two numbers." and add.version == 2


def test_the_rebuild_command_restores_a_lost_index(team_a, builtin_tools, capsys):
    import shutil

    services.tool_create(
        team=team_a,
        name="helper",
        description="Convert miles to kilometres.",
        config={"callable": "multiply"},
    )
    shutil.rmtree(tool_store().folder("global"))
    assert selectors.tool_search(team=team_a, query="volume of a sphere", k=1)[0].tool.name == "helper"
    call_command("rebuild_tool_index")
    assert "tools-global: 104 tool(s)" in capsys.readouterr().out
    assert selectors.tool_search(team=team_a, query="volume of a sphere", k=1)[0].tool.name == "volume_sphere"
    call_command("load_builtin_tools", "--pack", "datetime")
    assert "0 created, 0 updated, 3 unchanged" in capsys.readouterr().out
