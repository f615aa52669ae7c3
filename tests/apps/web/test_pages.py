import pytest

pytestmark = pytest.mark.django_db


def test_the_home_page_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.url.startswith("/login/")


def test_a_user_logs_in_and_out(client, alice):
    page = client.get("/login/")
    assert b'<label for="id_username">Username</label>' in page.content
    response = client.post("/login/", {"username": "alice", "password": "a-long-test-password"})
    assert response.status_code == 302
    assert b"Team A" in client.get("/").content
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_a_wrong_password_shows_an_error(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})
    assert b"didn't match" in response.content


def test_the_admin_lists_jobs_and_api_keys(client, make_user):
    admin = make_user("root", is_superuser=True)
    client.force_login(admin)
    for url in ["/admin/core/job/", "/admin/accounts/apikey/", "/admin/accounts/team/"]:
        assert client.get(url).status_code == 200, url


def test_the_api_docs_are_served_without_a_cdn(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    assert b"cdn" not in page.content.lower()
    assert client.get("/api/schema/").status_code == 200


def test_the_health_check_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
