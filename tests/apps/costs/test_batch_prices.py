"""Batch prices in the price book: the bundled LiteLLM table's ``*_cost_per_token_batches`` are loaded with
each price, filled in on rows loaded before the table carried them (never on a price that changed), and
imported with ``import_prices``; a price without them leaves the model out of provider batches."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from apps.costs.models import Price
from apps.costs.price_table import BUNDLED_EFFECTIVE, bundled_batch_prices_fill, bundled_source, price_entries
from apps.costs.services import price_current

pytestmark = pytest.mark.django_db


def test_a_fresh_database_has_gpt_4o_minis_batch_price_at_half_its_price():
    price = price_current(model_name="gpt-4o-mini")
    assert (price.batch_input_per_mtok, price.batch_output_per_mtok) == (Decimal("0.075"), Decimal("0.3"))
    assert price.batch_input_per_mtok * 2 == price.input_per_mtok


def test_batch_prices_are_read_both_or_neither():
    entries, _ = price_entries({
        "both": {"mode": "chat", "input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                 "input_cost_per_token_batches": 1e-06, "output_cost_per_token_batches": 4e-06},
        "half": {"mode": "chat", "input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                 "input_cost_per_token_batches": 1e-06},
    })
    by_name = {entry.model_name: entry for entry in entries}
    assert (by_name["both"].batch_input_per_mtok, by_name["both"].batch_output_per_mtok) == (Decimal("1"), 4)
    assert (by_name["half"].batch_input_per_mtok, by_name["half"].batch_output_per_mtok) == (None, None)


def test_rows_loaded_before_get_their_batch_price_and_a_changed_price_does_not():
    Price.objects.filter(model_name__in=["gpt-4o-mini", "gpt-4o"]).delete()
    source = bundled_source()
    Price.objects.create(model_name="gpt-4o-mini", effective_from=BUNDLED_EFFECTIVE, input_per_mtok=Decimal("0.15"),
                         output_per_mtok=Decimal("0.6"), source=source)
    Price.objects.create(model_name="gpt-4o", effective_from=BUNDLED_EFFECTIVE, input_per_mtok=Decimal("9"),
                         output_per_mtok=Decimal("10"), source=source)  # not the table's any more
    assert bundled_batch_prices_fill() == 1
    assert price_current(model_name="gpt-4o-mini").batch_output_per_mtok == Decimal("0.3")
    assert price_current(model_name="gpt-4o").batch_input_per_mtok is None
    assert bundled_batch_prices_fill() == 0  # again: nothing


def test_import_prices_brings_the_batch_prices(tmp_path):
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"acme-1": {
        "mode": "chat", "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
        "input_cost_per_token_batches": 1.5e-06, "output_cost_per_token_batches": 7.5e-06}}))
    call_command("import_prices", str(table))
    price = price_current(model_name="acme-1")
    assert (price.batch_input_per_mtok, price.batch_output_per_mtok) == (Decimal("1.5"), Decimal("7.5"))
