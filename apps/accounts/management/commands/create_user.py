"""Create a user, or add one to a team with a role (production set-up).

    manage.py create_user alice --email alice@example.org --team research --role admin

The password comes from the environment variable named by --password-env (default
PARSIMONY_NEW_PASSWORD), else from a prompt; never from the command line (it would land in the shell
history). Idempotent: an existing user keeps their password (unless --set-password) and only gets the
membership asked for; a role given again replaces the old one.
"""

from __future__ import annotations

import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import Role
from apps.accounts.services import membership_set, user_create

from ._refs import team_from_ref


class Command(BaseCommand):
    help = "Create a user (or find the existing one) and optionally give them a role in a team."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--team", help="team slug or name to add the user to")
        parser.add_argument("--role", choices=Role.values, help="role in --team (default member)")
        parser.add_argument("--superuser", action="store_true", help="may use the admin panel (/admin/)")
        parser.add_argument("--password-env", default="PARSIMONY_NEW_PASSWORD", help="variable holding the password")
        parser.add_argument("--set-password", action="store_true", help="also reset an existing user's password")

    def _password(self, env_name: str, username: str) -> str:
        password = os.environ.get(env_name)
        if password is None:
            if not sys.stdin.isatty():
                raise CommandError(f"no password: set {env_name} (or run in a terminal to be prompted)")
            password = getpass.getpass(f"password for {username}: ")
            if password != getpass.getpass("again: "):
                raise CommandError("the passwords differ")
        try:
            validate_password(password, get_user_model()(username=username))
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from exc
        return password

    @transaction.atomic
    def handle(self, *args, username: str, email: str, team: str | None, role: str | None, superuser: bool,
               password_env: str, set_password: bool, **options):
        if role and not team:
            raise CommandError("--role needs --team")
        target_team = team_from_ref(team) if team else None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            user = user_create(username=username, password=self._password(password_env, username), email=email,
                               is_superuser=superuser)
            self.stdout.write(self.style.SUCCESS(f"created user {username}" + (" (superuser)" if superuser else "")))
        else:
            self.stdout.write(f"user {username} exists")
            if set_password:
                user.set_password(self._password(password_env, username))
                user.save(update_fields=["password"])
                self.stdout.write(f"password of {username} changed")
            if superuser and not user.is_superuser:
                user.is_staff = user.is_superuser = True
                user.save(update_fields=["is_staff", "is_superuser"])
                self.stdout.write(f"{username} is now a superuser")
        if target_team is not None:
            membership = membership_set(team=target_team, user=user, role=role or Role.MEMBER)
            self.stdout.write(f"{username} is {membership.role} of {target_team.slug}")
