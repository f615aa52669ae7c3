"""Create (or refresh) the global built-in tools: 100 math tools, the calculator, date and time."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.agents.services import builtin_tools_load
from workers.agent.tools import PACKS


class Command(BaseCommand):
    help = "Create the global Tool rows of the built-in packs (idempotent) and index them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pack", action="append", choices=sorted(PACKS), help="Only these packs (repeatable)")

    def handle(self, *args, pack: list[str] | None, **options) -> None:
        try:
            counts = builtin_tools_load(packs=pack)
        except KeyError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Built-in tools: {counts['created']} created, {counts['updated']} updated, "
            f"{counts['unchanged']} unchanged."
        )
