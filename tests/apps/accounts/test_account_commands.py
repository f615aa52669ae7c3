"""The production set-up commands: create_team, create_user (with a role), create_api_key (secret once)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.accounts.models import ApiKey, Membership, Team
from apps.accounts.services import api_key_authenticate

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_creates_a_team_once_and_reports_it_the_second_time():
    out, _ = run("create_team", "Research")
    assert "created team 'Research', slug research" in out
    out, _ = run("create_team", "Research")
    assert "team 'Research' exists, slug research" in out
    assert Team.objects.filter(name="Research").count() == 1


def test_it_creates_a_user_with_a_role_from_a_password_in_the_environment(monkeypatch):
    run("create_team", "Research")
    monkeypatch.setenv("PARSIMONY_NEW_PASSWORD", "a-long-production-password")
    out, _ = run("create_user", "carol", "--team", "research", "--role", "admin", "--email", "c@example.org")
    assert "created user carol" in out and "carol is admin of research" in out
    carol = get_user_model().objects.get(username="carol")
    assert carol.check_password("a-long-production-password")
    assert Membership.objects.get(user=carol, team__slug="research").role == "admin"
    # Again, with another role: the user is kept (password unchanged), the role replaced.
    monkeypatch.setenv("PARSIMONY_NEW_PASSWORD", "another-long-password")
    out, _ = run("create_user", "carol", "--team", "Research", "--role", "viewer")
    assert "user carol exists" in out
    carol.refresh_from_db()
    assert carol.check_password("a-long-production-password")
    assert Membership.objects.get(user=carol, team__slug="research").role == "viewer"


def test_it_refuses_a_weak_or_missing_password_and_an_unknown_team(monkeypatch):
    monkeypatch.delenv("PARSIMONY_NEW_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="set PARSIMONY_NEW_PASSWORD"):
        run("create_user", "dave")
    monkeypatch.setenv("PARSIMONY_NEW_PASSWORD", "password")
    with pytest.raises(CommandError, match="password refused"):
        run("create_user", "dave")
    with pytest.raises(CommandError, match="no team with slug or name 'nope'"):
        run("create_user", "dave", "--team", "nope")
    assert not get_user_model().objects.filter(username="dave").exists()


def test_it_prints_an_api_key_once_that_authenticates_with_its_scopes():
    run("create_team", "Research")
    out, err = run("create_api_key", "research", "ci", "--scopes", "read,query", "--expires-days", "30")
    raw_key = out.strip()
    assert "shown once" in err and raw_key not in err
    key = api_key_authenticate(raw_key=raw_key)
    assert key is not None and key.team.slug == "research" and key.scopes == ["query", "read"]
    assert key.expires_at is not None
    assert raw_key not in str(ApiKey.objects.values_list())  # only the digest is stored


def test_it_names_the_valid_scopes_when_one_is_unknown():
    run("create_team", "Research")
    with pytest.raises(CommandError, match="unknown scopes .*valid: read, query, ingest, admin"):
        run("create_api_key", "research", "ci", "--scopes", "read,write")
    assert ApiKey.objects.count() == 0
