"""Shared by the account commands: find a team by slug or name, a user by username, with clear errors."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from apps.accounts.models import Team


def team_from_ref(ref: str) -> Team:
    team = Team.objects.filter(slug=ref).first()
    if team is None:
        matches = list(Team.objects.filter(name=ref.strip())[:2])
        if len(matches) > 1:
            raise CommandError(f"several teams are named {ref!r}: pass the slug ({', '.join(t.slug for t in matches)})")
        team = matches[0] if matches else None
    if team is None:
        known = ", ".join(Team.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none yet"
        raise CommandError(f"no team with slug or name {ref!r} (teams: {known}; create one with create_team)")
    return team


def user_from_ref(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user {username!r} (create one with create_user)")
    return user
