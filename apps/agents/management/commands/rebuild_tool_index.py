"""Rebuild the tool library indexes from the database (every team's and the global one, or one team's)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Team
from apps.agents.services import tool_index_rebuild
from apps.core.scoping import id_from_ref


class Command(BaseCommand):
    help = "Rebuild the FAISS tool indexes under DATA_ROOT/indexes/tools-*/ from the Tool rows."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--team", help="A team id or slug: rebuild only its index (and the global one)")
        parser.add_argument("--no-global", action="store_true", help="Leave the global index alone")

    def handle(self, *args, team: str | None, no_global: bool, **options) -> None:
        selected = None
        if team:
            pk = id_from_ref(team)
            selected = Team.objects.filter(slug=team).first() or (
                Team.objects.filter(pk=pk).first() if pk is not None else None
            )
            if selected is None:
                raise CommandError(f"no team {team!r}")
        counts = tool_index_rebuild(team=selected, include_global=not no_global)
        for scope, count in counts.items():
            self.stdout.write(f"tools-{scope.removeprefix('team ')}: {count} tool(s)")
        self.stdout.write(self.style.SUCCESS("Tool indexes rebuilt."))
