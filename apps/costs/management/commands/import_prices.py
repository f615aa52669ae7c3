"""Import a LiteLLM-format price table (model name -> per-token USD prices) into the price book."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from apps.costs.price_table import price_entries
from apps.costs.services import prices_set_many


class Command(BaseCommand):
    help = "Import prices from a LiteLLM model_prices_and_context_window JSON file (idempotent, keeps history)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--effective-from", help="ISO date the prices apply from (default: now)")
        parser.add_argument("--all-modes", action="store_true", help="Also import embedding/image/... entries")
        parser.add_argument("--only", nargs="*", help="Import only these model names")

    def handle(self, *args, file: Path, effective_from: str | None, all_modes: bool, only: list[str] | None, **options):
        if not file.exists():
            raise CommandError(f"{file} does not exist")
        try:
            table = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CommandError(f"{file} is not valid JSON: {exc}") from exc
        if not isinstance(table, dict):
            raise CommandError(f"{file}: expected an object keyed by model name")
        when = timezone.now()
        if effective_from:
            try:
                when = datetime.fromisoformat(effective_from)
            except ValueError as exc:
                raise CommandError(f"--effective-from {effective_from!r} is not an ISO date") from exc
            if timezone.is_naive(when):
                when = timezone.make_aware(when, timezone.get_fixed_timezone(0))
        entries, skipped = price_entries(table, all_modes=all_modes, only=set(only or []))
        rows = [
            {
                "model_name": entry.model_name, "input_per_mtok": entry.input_per_mtok,
                "output_per_mtok": entry.output_per_mtok, "cached_input_per_mtok": entry.cached_input_per_mtok,
                "batch_input_per_mtok": entry.batch_input_per_mtok,
                "batch_output_per_mtok": entry.batch_output_per_mtok, "provider": entry.provider,
            }
            for entry in entries
        ]
        with transaction.atomic():
            created, unchanged = prices_set_many(entries=rows, effective_from=when, source=file.name[:200])
        self.stdout.write(
            self.style.SUCCESS(
                f"prices: {created} added, {unchanged} unchanged, {skipped} skipped (no per-token price)"
            )
        )
