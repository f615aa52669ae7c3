"""Model endpoint pages: owners and admins add, edit, test and delete; the key is never shown again;
members and viewers read; every form posts and redirects (POST-redirect-GET)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.costs.models import ModelEndpoint
from apps.costs.services import price_set
from tests.support.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.django_db

SECRET = "sk-page-secret-9876543210LMNO"


@pytest.fixture(autouse=True)
def _prices(db):
    price_set(model_name="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))


def _form(**values):
    return {"name": "remote-gpt", "base_url": "https://api.example.com/v1", "model": "gpt-4o-mini",
            "api_key": SECRET, "price_name": "gpt-4o-mini", "context_window": "128000", "max_output_tokens": "512",
            "enabled": "on", **values}


def test_an_admin_creates_an_endpoint_and_its_key_is_never_shown_again(admin_client_a, team_a):
    response = admin_client_a.post("/team/endpoints/new/", _form())
    assert response.status_code == 302 and response.url == "/team/endpoints/"
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    listing = admin_client_a.get("/team/endpoints/").content.decode()
    assert "remote-gpt" in listing and "sk-...LMNO" in listing and SECRET not in listing
    edit = admin_client_a.get(f"/team/endpoints/{endpoint.pk}/edit/").content.decode()
    assert "sk-...LMNO" in edit and SECRET not in edit
    # A bad form answers with its errors and the typed key is not echoed back.
    bad = admin_client_a.post("/team/endpoints/new/", _form(name="other", price_name="mystery"))
    assert bad.status_code == 400 and SECRET not in bad.content.decode()
    assert "no price called" in bad.content.decode()


def test_editing_keeps_the_key_unless_a_new_one_is_typed(owner_client, team_a):
    from apps.costs.metering import endpoint_api_key

    owner_client.post("/team/endpoints/new/", _form())
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    response = owner_client.post(f"/team/endpoints/{endpoint.pk}/edit/", _form(api_key="", max_output_tokens="64"))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.max_output_tokens == 64 and endpoint_api_key(endpoint) == SECRET


def test_an_entered_price_shows_in_the_form_again(owner_client, team_a):
    owner_client.post("/team/endpoints/new/", _form(price_name="", input_per_mtok="2.5", output_per_mtok="10"))
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    assert endpoint.price_name == f"team-{team_a.pk}/remote-gpt"
    edit = owner_client.get(f"/team/endpoints/{endpoint.pk}/edit/").content.decode()
    assert 'value="2.5"' in edit and 'value="10"' in edit


def test_members_and_viewers_read_but_cannot_manage(member_client, viewer_client, owner_client, team_a):
    owner_client.post("/team/endpoints/new/", _form())
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    for client in (member_client, viewer_client):
        page = client.get("/team/endpoints/")
        assert page.status_code == 200 and "remote-gpt" in page.content.decode()
        assert "New endpoint" not in page.content.decode() and SECRET not in page.content.decode()
        assert client.get("/team/endpoints/new/").status_code == 403
        assert client.post("/team/endpoints/new/", _form(name="sneaky")).status_code == 403
        assert client.post(f"/team/endpoints/{endpoint.pk}/delete/").status_code == 403
        assert client.post(f"/team/endpoints/{endpoint.pk}/test/").status_code == 403
    assert not ModelEndpoint.objects.filter(name="sneaky").exists()


def test_another_team_cannot_touch_the_endpoint_and_global_ones_are_read_only(owner_client, outsider_client, team_a):
    owner_client.post("/team/endpoints/new/", _form())
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    assert outsider_client.get(f"/team/endpoints/{endpoint.pk}/edit/").status_code == 404
    assert outsider_client.post(f"/team/endpoints/{endpoint.pk}/delete/").status_code == 404
    assert "remote-gpt" not in outsider_client.get("/team/endpoints/").content.decode()
    global_endpoint = ModelEndpoint.objects.filter(team=None).first()
    assert owner_client.get(f"/team/endpoints/{global_endpoint.pk}/edit/").status_code == 404
    assert owner_client.post(f"/team/endpoints/{global_endpoint.pk}/delete/").status_code == 404


def test_test_connection_and_delete_redirect_with_their_result(owner_client, team_a, loopback_endpoints):
    with FakeOpenAIServer() as server:
        owner_client.post("/team/endpoints/new/", _form(base_url=server.base_url))
        endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
        response = owner_client.post(f"/team/endpoints/{endpoint.pk}/test/", follow=True)
    assert response.redirect_chain == [("/team/endpoints/", 302)]
    assert "remote-gpt: connected: gpt-4o-mini answered a 1-token completion" in response.content.decode()
    response = owner_client.post(f"/team/endpoints/{endpoint.pk}/delete/", follow=True)
    assert "Endpoint remote-gpt deleted." in response.content.decode()
    assert not ModelEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_the_price_search_offers_matching_prices(owner_client):
    options = owner_client.get("/team/endpoints/prices/?price_name=gpt-4o").content.decode()
    assert '<option value="gpt-4o-mini">' in options and "$0.1500 in" in options


def test_the_form_refuses_a_loopback_base_url_with_a_clear_error(admin_client_a, team_a):
    response = admin_client_a.post("/team/endpoints/new/", _form(base_url="http://127.0.0.1:9000/v1"))
    assert response.status_code == 400
    assert "127.0.0.1 is a private, loopback" in response.content.decode()
    assert not ModelEndpoint.objects.filter(team=team_a).exists()
