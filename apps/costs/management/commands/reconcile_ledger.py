"""Check that the ledger reconciles (``apps.costs.reconciliation``): print every difference, exit 1 on any."""

from __future__ import annotations

import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from apps.costs.reconciliation import ledger_reconcile


def _parse_since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None and (day := parse_date(value)) is not None:
        parsed = datetime(day.year, day.month, day.day)
    if parsed is None:
        raise CommandError(f"--since must be an ISO date or datetime, not {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


class Command(BaseCommand):
    help = (
        "Recompute every ledger row from its usage and copied prices; check budget windows (spent, reserved), "
        "expired holds, reservations and query/agent runs against their rows. Exits 1 on any difference."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", help="ISO date or datetime: check what was created from then on")

    def handle(self, *args, since: str | None = None, **options) -> None:
        differences = ledger_reconcile(since=_parse_since(since) if since else None)
        for difference in differences:
            self.stdout.write(str(difference))
        if differences:
            self.stderr.write(f"{len(differences)} differences")
            sys.exit(1)
        self.stdout.write("the ledger reconciles: 0 differences")
