"""Create a team (production set-up): `manage.py create_team "Research" [--owner alice]`.

Idempotent: a team with that name (or slug) already there is reported, not duplicated; --owner then
makes that user an owner of it. Prints the team's slug (what the other commands take).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import Role, Team
from apps.accounts.services import membership_set, team_create
from apps.core.errors import ValidationFailed

from ._refs import user_from_ref


class Command(BaseCommand):
    help = "Create a team (or report the existing one of that name), optionally with an owner."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the team's name")
        parser.add_argument("--owner", help="username to make an owner of the team")

    @transaction.atomic
    def handle(self, *args, name: str, owner: str | None, **options):
        user = user_from_ref(owner) if owner else None
        team = Team.objects.filter(name=name.strip()).first() or Team.objects.filter(slug=name.strip()).first()
        if team is None:
            try:
                team = team_create(name=name, owner=user)
            except ValidationFailed as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(self.style.SUCCESS(f"created team {team.name!r}, slug {team.slug}"))
        else:
            self.stdout.write(f"team {team.name!r} exists, slug {team.slug}")
            if user is not None:
                membership_set(team=team, user=user, role=Role.OWNER)
        if user is not None:
            self.stdout.write(f"{user.username} is an owner of {team.slug}")
