"""Create an API key for a team (production set-up); the secret is printed once, only its digest is kept.

    manage.py create_api_key research "ci pipeline" --scopes read,query [--expires-days 90] [--created-by alice]

Not idempotent on purpose: each call makes a new key (names need not be unique); revoke old ones on
the API keys page or in the admin. The secret alone goes to stdout, so `KEY=$(manage.py create_api_key
...)` captures it; the rest goes to stderr.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.accounts.models import Scope
from apps.accounts.services import api_key_create
from apps.core.errors import ValidationFailed

from ._refs import team_from_ref, user_from_ref


class Command(BaseCommand):
    help = "Create an API key for a team and print its secret once."

    def add_arguments(self, parser):
        parser.add_argument("team", help="team slug or name")
        parser.add_argument("name", help="what the key is for")
        parser.add_argument("--scopes", required=True, help=f"comma-separated, any of: {', '.join(Scope.values)}")
        parser.add_argument("--expires-days", type=int, help="expire after this many days (default never)")
        parser.add_argument("--created-by", help="username recorded as the key's creator")

    def handle(self, *args, team: str, name: str, scopes: str, expires_days: int | None, created_by: str | None,
               **options):
        target = team_from_ref(team)
        creator = user_from_ref(created_by) if created_by else None
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            created = api_key_create(
                team=target, name=name, scopes=[s.strip() for s in scopes.split(",") if s.strip()],
                created_by=creator, expires_at=expires_at,
            )
        except ValidationFailed as exc:
            raise CommandError(str(exc)) from exc
        key = created.api_key
        self.stderr.write(
            f"created key {key.name!r} ({key.prefix}) for {target.slug}, scopes {','.join(key.scopes)}"
            + (f", expires {key.expires_at:%Y-%m-%d}" if key.expires_at else "")
            + ". The secret below is shown once:"
        )
        self.stdout.write(created.raw_key)
