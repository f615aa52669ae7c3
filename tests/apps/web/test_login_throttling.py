"""Login throttling (django-axes): repeated failed logins lock the username out from that address."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_it_locks_out_a_username_after_the_failure_limit_even_with_the_right_password(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    locked = client.post("/login/", {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429
    right = client.post("/login/", {"username": "alice", "password": "a-long-test-password"})
    assert right.status_code == 429
    assert client.get("/").status_code == 302  # still not logged in


def test_a_success_before_the_limit_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    assert client.post("/login/", {"username": "alice", "password": "a-long-test-password"}).status_code == 302
    client.post("/logout/")
    assert client.post("/login/", {"username": "alice", "password": "wrong"}).status_code == 200


def test_the_admin_login_is_throttled_too(client, make_user, settings):
    make_user("root", is_superuser=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "root", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "root", "password": "a-long-test-password"})
    assert response.status_code == 429
