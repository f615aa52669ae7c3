"""Admin: tools (saves re-index through the services), the http allow-list, agents and runs."""

import pytest

from apps.agents.indexing import tool_store
from apps.agents.models import Tool

pytestmark = pytest.mark.django_db


def test_the_admin_manages_tools_and_the_allow_list_and_reindexes_on_save(client, make_user, team_a):
    from apps.agents.models import HttpAllowedHost

    client.force_login(make_user("root", is_superuser=True))
    for url in [
        "/admin/agents/tool/",
        "/admin/agents/httpallowedhost/",
        "/admin/agents/agent/",
        "/admin/agents/agentrun/",
        "/admin/agents/tool/add/",
    ]:
        assert client.get(url).status_code == 200, url
    assert (
        client.post(
            "/admin/agents/httpallowedhost/add/", {"host": "api.weather.test", "note": "demo"}
        ).status_code
        == 302
    )
    assert HttpAllowedHost.objects.filter(host="api.weather.test").exists()
    form = {"team": "", "name": "to_kelvin", "description": "Convert Celsius to Kelvin.", "kind": "python",
            "parameters": "{}", "config": '{"callable": "add"}', "examples": "[]", "enabled": "on"}
    assert client.post("/admin/agents/tool/add/", form).status_code == 302
    tool = Tool.objects.get(name="to_kelvin", team=None)
    assert tool.parameters["required"] == ["a", "b"]
    assert tool_store().ids("global") == [tool.pk]
    changed = client.post(f"/admin/agents/tool/{tool.pk}/change/", {**form, "description": "Kelvin from Celsius."})
    assert changed.status_code == 302
    tool.refresh_from_db()
    assert tool.version == 2
    refused = client.post("/admin/agents/tool/add/", {**form, "name": "bad", "config": '{"callable": "nope"}'})
    assert refused.status_code == 200 and "unknown built-in callable" in refused.content.decode()
    assert client.post(f"/admin/agents/tool/{tool.pk}/delete/", {"post": "yes"}).status_code == 302
    assert tool_store().ids("global") == []
