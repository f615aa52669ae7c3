"""The audit log of money and access settings (django-auditlog): who changed which budget, price, endpoint,
API key or role, when, with old and new values; read-only in the admin."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from apps.accounts.models import ApiKey, Membership, Role
from apps.accounts.services import api_key_revoke, membership_set
from apps.costs.models import Budget, ModelEndpoint, Price
from apps.costs.services import budget_save

pytestmark = pytest.mark.django_db


def _entries(model, pk) -> list[LogEntry]:
    return list(
        LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(model), object_pk=str(pk)).order_by("pk")
    )


@pytest.fixture
def root(make_user):
    return make_user("root", is_superuser=True)


def test_a_budget_change_in_the_admin_records_the_actor_and_old_and_new_values(client, root, team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="month")
    client.force_login(root)
    response = client.post(
        f"/admin/costs/budget/{budget.pk}/change/",
        {"team": team_a.pk, "scope": "team", "period": "month", "hard_limit": "25", "soft_limit_percent": 80,
         "enabled": "on"},
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    created, changed = _entries(Budget, budget.pk)
    assert created.action == LogEntry.Action.CREATE and created.actor is None  # made in code, not by a request
    assert changed.action == LogEntry.Action.UPDATE and changed.actor == root
    old, new = changed.changes_dict["hard_limit"]
    assert (Decimal(old), Decimal(new)) == (10, 25)
    assert changed.timestamp is not None


def test_a_budget_change_over_rest_records_the_keys_creator_and_the_key(team_a, alice, make_api_key, api_client):
    created = make_api_key(team_a, scopes=["admin"], user=alice)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    budget_id = api_client.post("/api/v1/budgets", {"hard_limit": "5"}, format="json").json()["id"]
    assert api_client.patch(f"/api/v1/budgets/{budget_id}", {"hard_limit": "7.5"}, format="json").status_code == 200
    assert api_client.delete(f"/api/v1/budgets/{budget_id}").status_code == 204
    create, update, delete = _entries(Budget, budget_id)
    assert [e.action for e in (create, update, delete)] == [
        LogEntry.Action.CREATE, LogEntry.Action.UPDATE, LogEntry.Action.DELETE,
    ]
    assert {e.actor for e in (create, update, delete)} == {alice}
    assert update.changes_dict["hard_limit"] == ["5.0000000000", "7.5000000000"]
    assert update.additional_data == {"api_key_id": created.api_key.pk, "api_key": created.api_key.name}


def test_roles_keys_prices_and_endpoints_are_logged_without_secrets(team_a, alice, make_api_key, make_user):
    carol = make_user("carol")
    membership = membership_set(team=team_a, user=carol, role=Role.MEMBER)
    membership_set(team=team_a, user=carol, role=Role.ADMIN)
    assert _entries(Membership, membership.pk)[-1].changes_dict["role"] == ["member", "admin"]
    key = make_api_key(team_a).api_key
    api_key_revoke(api_key=key)
    entries = _entries(ApiKey, key.pk)
    assert "revoked_at" in entries[-1].changes_dict
    assert all("secret_hash" not in e.changes_dict for e in entries)
    price = Price.objects.create(
        model_name="m", effective_from=datetime(2026, 1, 1, tzinfo=UTC), input_per_mtok=Decimal(1)
    )
    assert _entries(Price, price.pk)[0].changes_dict["input_per_mtok"][1] == "1"
    endpoint = ModelEndpoint.objects.create(name="x", price_name="m")
    endpoint.max_output_tokens = 64
    endpoint.save()
    assert _entries(ModelEndpoint, endpoint.pk)[-1].changes_dict["max_output_tokens"] == ["512", "64"]


def test_the_admin_shows_log_entries_but_refuses_edits_and_deletes(client, root, team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="month")
    (entry,) = _entries(Budget, budget.pk)
    client.force_login(root)
    assert client.get("/admin/auditlog/logentry/").status_code == 200
    assert client.get(f"/admin/auditlog/logentry/{entry.pk}/change/").status_code == 200  # read-only view
    assert client.post(f"/admin/auditlog/logentry/{entry.pk}/change/", {"action": 1}).status_code == 403
    assert client.post(f"/admin/auditlog/logentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/auditlog/logentry/add/").status_code == 403
    entry.refresh_from_db()
    assert entry.action == LogEntry.Action.CREATE
