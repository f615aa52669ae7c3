"""Create the demo team and admin user for the embedded default (idempotent)."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import Membership, Role, Team
from apps.accounts.services import membership_set, team_create, user_create
from apps.core.seeders import SEEDERS


class Command(BaseCommand):
    help = "Create a demo team and an admin user so a new install can log in right away."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default=os.environ.get("PARSIMONY_DEMO_USER", "admin"))
        parser.add_argument("--password", default=os.environ.get("PARSIMONY_DEMO_PASSWORD", "parsimony-demo"))
        parser.add_argument("--team", default="Demo team")

    @transaction.atomic
    def handle(self, *args, username: str, password: str, team: str, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError("bootstrap_demo is for the embedded default; use createsuperuser in production")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        created_user = user is None
        if created_user:
            user = user_create(username=username, password=password, is_superuser=True)
        demo_team = Team.objects.filter(name=team).first() or team_create(name=team)
        if not Membership.objects.filter(user=user, team=demo_team).exists():
            membership_set(team=demo_team, user=user, role=Role.OWNER)
        for seed in SEEDERS:
            seed(team=demo_team, user=user, stdout=self.stdout)
        self.stdout.write(self.style.SUCCESS("Parsimony is ready."))
        if created_user:
            self.stdout.write(f"Log in at http://127.0.0.1:8000/ as '{username}' with password '{password}'.")
        else:
            self.stdout.write(f"Log in at http://127.0.0.1:8000/ as '{username}' (password unchanged).")

