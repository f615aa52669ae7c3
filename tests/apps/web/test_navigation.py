"""Every page: login required, renders for every role, labelled inputs, the team switcher."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db

PAGES = ["/", "/corpora/", "/ask/", "/pipelines/", "/usage/", "/team/members/", "/team/api-keys/", "/jobs/",
         "/team/endpoints/"]


@pytest.mark.parametrize("url", PAGES + ["/pipelines/new/", "/usage/budgets/new/"])
def test_pages_need_a_login(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith("/login/")


@pytest.mark.parametrize("who", ["owner_client", "member_client", "viewer_client", "outsider_client"])
def test_every_page_renders_for_every_role_with_labelled_inputs(request, who, corpus, pipeline):
    client = request.getfixturevalue(who)
    for url in PAGES + [f"/corpora/{corpus.pk}/"] if who != "outsider_client" else PAGES:
        page = client.get(url)
        assert page.status_code == 200, url
        body = page.content.decode()
        assert 'aria-current="page"' in body, url
        # Every visible input, select and textarea has a label pointing at its id.
        for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", body):
            if re.search(r'type="(hidden|submit)"', tag):
                continue
            match = re.search(r'\bid="([^"]+)"', tag)
            assert match, f"{url}: {tag}"
            assert f'for="{match.group(1)}"' in body, f"{url}: no label for {tag}"


def test_the_team_switcher_changes_the_active_team(client, alice, team_b, bob):
    from apps.accounts.services import membership_set

    membership_set(team=team_b, user=alice, role="viewer")
    client.force_login(alice)
    client.post("/team/switch/", {"team_id": team_b.pk, "next": "/corpora/"})
    page = client.get("/team/members/").content.decode()
    assert "Members of Team B" in page and "bob" in page


def test_a_user_without_a_team_is_sent_home(client, make_user):
    client.force_login(make_user("loner"))
    response = client.get("/corpora/", follow=True)
    assert b"not a member of any team" in response.content
