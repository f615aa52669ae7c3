"""Team-managed model endpoints: the API key encrypted at rest and never returned, the price from the book
or entered (versioned, the team's own), roles, and the connection test against a real HTTP server."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from apps.core.secrets import SecretUnreadable, secret_decrypt, secret_encrypt
from apps.costs.connection_test import endpoint_test
from apps.costs.metering import endpoint_api_key, endpoint_target
from apps.costs.models import ModelEndpoint, Price, UsageRecord
from apps.costs.services import price_set
from apps.costs.services.endpoints import endpoint_delete, endpoint_save
from tests.support.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.django_db

SECRET = "sk-test-0123456789abcdefWXYZ"


@pytest.fixture
def gpt4o_price(db):
    price, _ = price_set(model_name="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))
    return price


def _save(team, **values):
    fields = {"name": "remote-gpt", "base_url": "https://api.example.com/v1", "model": "gpt-4o-mini",
              "price_name": "gpt-4o-mini", "api_key": SECRET, **values}
    return endpoint_save(team=team, **fields)


def test_it_stores_the_api_key_encrypted_and_decrypts_it_for_the_client(team_a, gpt4o_price):
    endpoint = _save(team_a)
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key_encrypted, api_key_hint, api_key_env FROM costs_modelendpoint WHERE id = %s",
                       [endpoint.pk])
        stored, hint, env = cursor.fetchone()
    assert SECRET not in stored and SECRET[3:-4] not in stored and stored.startswith("gAAAA")  # a Fernet token
    assert hint == "sk-...WXYZ" and env == ""
    assert endpoint_api_key(ModelEndpoint.objects.get(pk=endpoint.pk)) == SECRET
    assert endpoint_target(endpoint).api_key == SECRET
    assert SECRET not in repr(endpoint_target(endpoint))


def test_a_wrong_secrets_key_is_a_clear_error_and_the_old_key_still_opens_it(team_a, gpt4o_price, settings):
    settings.PARSIMONY_SECRETS_KEY = "the-first-key"
    endpoint = _save(team_a)
    settings.PARSIMONY_SECRETS_KEY = "another-key"
    with pytest.raises(SecretUnreadable, match="PARSIMONY_SECRETS_KEY .* is not the key it was stored with"):
        endpoint_api_key(endpoint)
    settings.PARSIMONY_SECRETS_KEY_PREVIOUS = ["the-first-key"]
    assert endpoint_api_key(endpoint) == SECRET


def test_rotate_secrets_re_encrypts_under_the_current_key(team_a, gpt4o_price, settings):
    from django.core.management import call_command

    settings.PARSIMONY_SECRETS_KEY = "old-key"
    endpoint = _save(team_a)
    settings.PARSIMONY_SECRETS_KEY, settings.PARSIMONY_SECRETS_KEY_PREVIOUS = "new-key", ["old-key"]
    call_command("rotate_secrets", verbosity=0)
    settings.PARSIMONY_SECRETS_KEY_PREVIOUS = []
    endpoint.refresh_from_db()
    assert endpoint_api_key(endpoint) == SECRET


def test_the_round_trip_is_exact_and_tokens_differ_each_time():
    first, second = secret_encrypt("s3cret ünïcode"), secret_encrypt("s3cret ünïcode")
    assert first != second
    assert secret_decrypt(first) == secret_decrypt(second) == "s3cret ünïcode"
    with pytest.raises(SecretUnreadable):
        secret_decrypt("not-a-token")


def test_an_entered_price_is_the_teams_own_and_versioned(team_a, team_b):
    endpoint = _save(team_a, price_name="", input_per_mtok=Decimal("1.5"), output_per_mtok=Decimal("6"))
    assert endpoint.price_name == f"team-{team_a.pk}/remote-gpt"
    assert Price.objects.get(model_name=endpoint.price_name).output_per_mtok == Decimal("6")
    _save(team_a, endpoint=endpoint, price_name="", input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"),
          api_key=None)
    rows = Price.objects.filter(model_name=endpoint.price_name).order_by("effective_from")
    assert [r.input_per_mtok for r in rows] == [Decimal("1.5"), Decimal("2")]  # a new row, the old one kept
    # Another team cannot price its endpoint with team A's own price.
    with pytest.raises(Exception, match="no price called"):
        _save(team_b, price_name=endpoint.price_name)


def test_it_refuses_an_unknown_price_a_bad_url_and_a_duplicate_name(team_a, gpt4o_price):
    with pytest.raises(Exception, match="no price called 'mystery'"):
        _save(team_a, price_name="mystery")
    with pytest.raises(Exception, match="http"):
        _save(team_a, base_url="ftp://example.com")
    _save(team_a)
    with pytest.raises(Exception, match="already has an endpoint"):
        _save(team_a)


def test_keeping_clearing_and_replacing_the_key(team_a, gpt4o_price):
    endpoint = _save(team_a)
    endpoint = _save(team_a, endpoint=endpoint, api_key=None)
    assert endpoint_api_key(endpoint) == SECRET
    endpoint = _save(team_a, endpoint=endpoint, api_key=None, clear_api_key=True)
    assert endpoint.api_key_encrypted == endpoint.api_key_hint == "" and endpoint_api_key(endpoint) is None


def test_an_endpoint_in_use_is_not_deleted(team_a, gpt4o_price):
    from apps.rag.services import pipeline_save

    endpoint = _save(team_a)
    pipeline_save(team=team_a, name="uses-it", model_endpoint=endpoint, corpora=[], retriever="none")
    with pytest.raises(Exception, match="used by pipeline uses-it"):
        endpoint_delete(endpoint=endpoint, team=team_a)
    assert ModelEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_the_connection_test_meters_a_one_token_completion(team_a, alice, gpt4o_price, loopback_endpoints):
    with FakeOpenAIServer() as server:
        endpoint = _save(team_a, base_url=server.base_url)
        result = endpoint_test(endpoint=endpoint, team=team_a, user=alice)
        assert server.bodies[-1]["max_tokens"] == 1
    assert result.ok and result.method == "completion", result
    record = UsageRecord.objects.get(team=team_a, pipeline_name="endpoint-test")
    assert record.completion_tokens == 1 and record.cost == result.cost > 0


def test_the_connection_test_reports_a_closed_port_and_a_missing_model(team_a, gpt4o_price, loopback_endpoints):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = _save(team_a, base_url=f"http://127.0.0.1:{port}/v1")
    result = endpoint_test(endpoint=endpoint, team=team_a)
    assert not result.ok and "could not connect" in result.message
    with FakeOpenAIServer(models=["other-model"]) as server:
        endpoint = _save(team_a, endpoint=endpoint, base_url=server.base_url, api_key=None)
        result = endpoint_test(endpoint=endpoint, team=team_a)
    assert not result.ok and result.method == "models" and "does not list 'gpt-4o-mini'" in result.message
    assert not UsageRecord.objects.filter(pipeline_name="endpoint-test").exists()


def test_the_connection_test_lists_models_for_free(team_a, gpt4o_price, loopback_endpoints):
    with FakeOpenAIServer(models=["gpt-4o-mini"]) as server:
        endpoint = _save(team_a, base_url=server.base_url)
        result = endpoint_test(endpoint=endpoint, team=team_a)
        assert server.requests == 0 and server.authorizations == [f"Bearer {SECRET}"]
    assert result.ok and result.method == "models" and result.cost == 0


# --------------------------------------------------------------------------- REST


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def test_rest_creates_reads_and_never_returns_the_key(api_client, team_a, make_api_key, gpt4o_price):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    body = {"name": "remote-gpt", "base_url": "https://api.example.com/v1", "model": "gpt-4o-mini",
            "api_key": SECRET, "price_name": "gpt-4o-mini", "context_window": 128000, "max_output_tokens": 512}
    created = client.post("/api/v1/model-endpoints", body, format="json")
    assert created.status_code == 201, created.content
    assert SECRET not in created.content.decode()
    data = created.json()
    assert data["api_key_hint"] == "sk-...WXYZ" and data["has_api_key"] and data["scope"] == "team"
    assert data["price"]["input_per_mtok"] == "0.1500000000"
    listed = client.get("/api/v1/model-endpoints").content.decode()
    one = client.get(f"/api/v1/model-endpoints/{data['id']}").content.decode()
    patched = client.patch(f"/api/v1/model-endpoints/{data['id']}", {"max_output_tokens": 256}, format="json")
    assert patched.status_code == 200 and patched.json()["max_output_tokens"] == 256
    assert all(SECRET not in text for text in (listed, one, patched.content.decode()))
    assert endpoint_api_key(ModelEndpoint.objects.get(pk=data["id"])) == SECRET  # PATCH kept the key
    assert client.delete(f"/api/v1/model-endpoints/{data['id']}").status_code == 204


def test_rest_managing_needs_the_admin_scope_and_global_endpoints_are_read_only(
    api_client, team_a, team_b, make_api_key, gpt4o_price
):
    client = _client(api_client, make_api_key(team_a, scopes=["read", "query", "ingest"]))
    body = {"name": "x", "base_url": "https://api.example.com/v1", "model": "gpt-4o-mini", "price_name": "gpt-4o-mini"}
    assert client.post("/api/v1/model-endpoints", body, format="json").status_code == 403
    listed = client.get("/api/v1/model-endpoints").json()
    global_ids = [e["id"] for e in listed["results"] if e["scope"] == "global"]
    assert global_ids
    admin = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    assert admin.patch(f"/api/v1/model-endpoints/{global_ids[0]}", {"enabled": False}, format="json").status_code == 404
    other = _save(team_b)
    assert admin.get(f"/api/v1/model-endpoints/{other.pk}").status_code == 404


def test_rest_prices_search_and_test(api_client, team_a, make_api_key, gpt4o_price, loopback_endpoints):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    found = client.get("/api/v1/prices?search=gpt-4o").json()
    assert [p["model_name"] for p in found["results"][:2]] == ["gpt-4o", "gpt-4o-mini"]  # shortest names first
    with FakeOpenAIServer() as server:
        endpoint = _save(team_a, base_url=server.base_url)
        tested = client.post(f"/api/v1/model-endpoints/{endpoint.pk}/test")
    assert tested.status_code == 200 and tested.json()["ok"] and tested.json()["method"] == "completion"


# --------------------------------------------------------------------------- outbound network policy


@pytest.mark.parametrize("base_url", ["http://169.254.169.254/latest", "http://127.0.0.1:8000/v1",
                                      "http://[::1]:8000/v1", "http://10.0.0.5/v1", "http://localhost:8080/v1",
                                      "http://192.168.1.20:11434/v1"])
def test_a_team_endpoint_on_a_private_address_is_refused_when_saved(team_a, gpt4o_price, base_url):
    from apps.core.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as caught:
        _save(team_a, base_url=base_url)
    assert caught.value.code == "address_not_allowed"
    message = caught.value.detail["fields"]["base_url"]
    assert "not allowed" in message and "PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS" in message
    assert not ModelEndpoint.objects.filter(team=team_a).exists()


def test_the_operator_allows_a_private_network_for_a_self_hosted_server(team_a, gpt4o_price, settings):
    settings.PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS = ["192.168.1.0/24", "localhost"]
    assert _save(team_a, base_url="http://192.168.1.20:11434/v1").pk
    assert _save(team_a, name="local", base_url="http://localhost:8080/v1").pk


def test_a_name_resolving_to_loopback_is_refused_when_connecting_but_a_global_endpoint_is_not(team_a, gpt4o_price):
    """``localhost`` stands for any DNS name that resolves to a private address (saved by the ORM here: the
    form refuses the name itself). Neither the connection test nor a real call reaches the server."""
    from apps.costs.metering import model_call
    from apps.costs.services.ledger import LedgerContext
    from workers.runtime.openai_compat import EndpointError

    with FakeOpenAIServer(models=["gpt-4o-mini"]) as server:
        port = server.base_url.rsplit(":", 1)[1].split("/")[0]
        endpoint = ModelEndpoint.objects.create(
            team=team_a, name="sneaky", kind="openai", base_url=f"http://localhost:{port}/v1",
            remote_model="gpt-4o-mini", price_name="gpt-4o-mini")
        result = endpoint_test(endpoint=endpoint, team=team_a)
        assert not result.ok and "refused: localhost resolves to" in result.message, result
        assert "PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS" in result.message
        with pytest.raises(EndpointError, match="refused by the network policy: localhost resolves to 127.0.0.1"):
            model_call(endpoint=endpoint, messages=[{"role": "user", "content": "hi"}], max_output_tokens=4,
                       wall_time_limit_s=5, context=LedgerContext(team=team_a, pipeline_name="t"))
        assert server.requests == 0 and server.authorizations == []
        operators = ModelEndpoint.objects.create(
            team=None, name="operators-local", kind="openai", base_url=f"http://localhost:{port}/v1",
            remote_model="gpt-4o-mini", price_name="gpt-4o-mini")
        assert endpoint_test(endpoint=operators, team=team_a).ok
        assert endpoint_target(operators).network_policy is None
        assert endpoint_target(endpoint).network_policy is not None


def test_rest_refuses_a_metadata_address_with_a_clear_error(api_client, team_a, make_api_key, gpt4o_price):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    body = {"name": "meta", "base_url": "http://169.254.169.254/v1", "model": "gpt-4o-mini",
            "price_name": "gpt-4o-mini"}
    response = client.post("/api/v1/model-endpoints", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "address_not_allowed"
    assert "169.254.169.254 is a private" in error["detail"]["fields"]["base_url"]
