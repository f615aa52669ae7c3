import hashlib

import pytest
from django.db import connection

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate, api_key_revoke
from apps.core.services import job_create

pytestmark = pytest.mark.django_db


def test_it_stores_only_the_hash_and_a_visible_prefix(team_a, make_api_key):
    created = make_api_key(team_a)
    row = ApiKey.objects.get(pk=created.api_key.pk)
    assert row.secret_hash == hashlib.sha256(created.raw_key.encode()).hexdigest()
    assert created.raw_key.startswith(f"psk_{row.prefix}_")
    secret_part = created.raw_key.split("_", 2)[2]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        stored = " ".join(str(value) for record in cursor.fetchall() for value in record)
    assert secret_part not in stored
    assert created.raw_key not in stored


def test_it_authenticates_a_key_and_records_when_it_was_used(team_a, make_api_key):
    created = make_api_key(team_a)
    assert created.api_key.last_used_at is None
    assert api_key_authenticate(raw_key=created.raw_key).pk == created.api_key.pk
    created.api_key.refresh_from_db()
    assert created.api_key.last_used_at is not None


def test_it_rejects_a_tampered_key(team_a, make_api_key):
    created = make_api_key(team_a)
    assert api_key_authenticate(raw_key=created.raw_key[:-2] + "xx") is None
    assert api_key_authenticate(raw_key="not-a-key") is None


def test_a_revoked_key_is_rejected_by_the_api(team_a, make_api_key, api_client):
    created = make_api_key(team_a)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    assert api_client.get("/api/v1/me").status_code == 200
    api_key_revoke(api_key=created.api_key)
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid, revoked or expired API key"


def test_a_key_of_team_a_sees_nothing_of_team_b(team_a, team_b, make_api_key, api_client):
    own = job_create(kind="diagnostics.probe_cpu", team=team_a)
    other = job_create(kind="diagnostics.probe_cpu", team=team_b)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a).raw_key}")
    listed = api_client.get("/api/v1/jobs").json()
    assert [job["id"] for job in listed["results"]] == [own.pk]
    response = api_client.get(f"/api/v1/jobs/{other.pk}")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "not found", "detail": {}}}
    assert api_client.post(f"/api/v1/jobs/{other.pk}/cancel").status_code == 404


def test_a_read_only_key_cannot_write(team_a, make_api_key, api_client):
    job = job_create(kind="diagnostics.probe_cpu", team=team_a)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a, scopes=['read']).raw_key}")
    response = api_client.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert response.status_code == 403
    assert "'ingest' scope" in response.json()["error"]["message"]


def test_it_rejects_unknown_scopes(team_a, make_api_key):
    from apps.core.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="unknown scopes"):
        make_api_key(team_a, scopes=["read", "root"])


def test_requests_without_credentials_are_refused(api_client, db):
    response = api_client.get("/api/v1/jobs")
    assert response.status_code in (401, 403)
    assert "error" in response.json()
