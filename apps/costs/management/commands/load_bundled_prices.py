"""Price the common remote models from the LiteLLM table shipped in the litellm wheel (idempotent)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.costs.price_table import PriceTableMissing, bundled_prices_load


class Command(BaseCommand):
    help = (
        "Add the bundled LiteLLM list price of every chat model the price book has no price for "
        "(never changes a price already there; the migrations and bootstrap_demo run it too)."
    )

    def handle(self, *args, **options) -> None:
        try:
            result = bundled_prices_load()
        except PriceTableMissing as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(
            f"{result.source}: {result.added} prices added, {result.already_priced} already priced, "
            f"{result.skipped} skipped (no per-token price)"
        ))
