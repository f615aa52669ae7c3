"""Prices out of the box: the migrations (and bootstrap_demo) load the LiteLLM table shipped in the litellm
wheel, so gpt-4o, claude-*, gemini-*, mistral... are priced on a fresh install; loading again adds nothing
and never changes a price already in the book."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from importlib import import_module

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.costs import price_table
from apps.costs.models import Price
from apps.costs.price_table import (
    BUNDLED_EFFECTIVE,
    PriceTableMissing,
    bundled_prices_load,
    bundled_table_path,
)
from apps.costs.services import price_current, price_set

pytestmark = pytest.mark.django_db


def _table() -> dict:
    return json.loads(bundled_table_path().read_text())


def test_a_fresh_database_prices_gpt_4o_at_its_litellm_price():
    table = _table()
    gpt4o = price_current(model_name="gpt-4o")
    assert (gpt4o.input_per_mtok, gpt4o.output_per_mtok) == (Decimal("2.5"), Decimal("10"))
    assert gpt4o.input_per_mtok == Decimal(str(table["gpt-4o"]["input_cost_per_token"])) * 1_000_000
    assert gpt4o.effective_from == BUNDLED_EFFECTIVE and "litellm 1.110.2" in gpt4o.source
    common = ("gpt-4o-mini", "claude-sonnet-5", "gemini-2.5-pro", "gemini/gemini-2.5-pro",
              "mistral/mistral-large-latest")
    for name in common:
        assert price_current(model_name=name).output_per_mtok > 0, name
    assert Price.objects.filter(source__endswith="(bundled)").count() > 1000


def test_loading_again_adds_nothing():
    before = Price.objects.count()
    result = bundled_prices_load()
    assert result.added == 0 and result.already_priced > 1000
    assert Price.objects.count() == before


def test_it_never_changes_a_price_already_in_the_book():
    Price.objects.filter(model_name__in=["gpt-4o", "claude-sonnet-5"]).delete()
    custom, _ = price_set(model_name="gpt-4o", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"),
                          effective_from=timezone.now())
    result = bundled_prices_load()
    assert result.added == 1  # claude-sonnet-5, which had no price left
    assert price_current(model_name="gpt-4o") == custom
    assert Price.objects.filter(model_name="gpt-4o").count() == 1  # nothing back-dated under it either


def test_without_the_wheel_it_says_how_to_get_it(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.distribution", missing)
    with pytest.raises(PriceTableMissing, match="pip install --no-deps litellm==1.110.2"):
        bundled_prices_load()
    with pytest.raises(CommandError, match="bundled price table is not installed"):
        call_command("load_bundled_prices", stdout=io.StringIO())
    out = io.StringIO()
    from apps.core.seeders import seed_remote_prices

    seed_remote_prices(team=None, user=None, stdout=out)
    assert "not loaded" in out.getvalue()


def test_the_command_and_the_demo_seeder_report_what_they_did():
    Price.objects.filter(model_name="gpt-4o").delete()
    out = io.StringIO()
    call_command("load_bundled_prices", stdout=out)
    assert "1 prices added" in out.getvalue() and "litellm 1.110.2" in out.getvalue()
    from apps.core.seeders import SEEDERS, seed_remote_prices

    assert SEEDERS[0] is seed_remote_prices
    out = io.StringIO()
    seed_remote_prices(team=None, user=None, stdout=out)
    assert "Remote model prices: 0 added" in out.getvalue()


def test_the_table_is_read_without_importing_litellm():
    import sys

    sys.modules.pop("litellm", None)
    price_table.bundled_table_path()
    assert "litellm" not in sys.modules


def test_the_migration_encrypts_a_plaintext_key_pasted_as_an_env_var(team_a):
    from django.apps import apps as registry

    from apps.costs.metering import endpoint_api_key
    from apps.costs.models import ModelEndpoint

    pasted = ModelEndpoint.objects.create(team=team_a, name="pasted", kind="openai", base_url="https://x.example/v1",
                                          api_key_env="sk-live-abcdefghijklmnop1234", price_name="gpt-4o")
    named = ModelEndpoint.objects.create(team=team_a, name="named", kind="openai", base_url="https://x.example/v1",
                                         api_key_env="OPENAI_API_KEY", price_name="gpt-4o")
    migration = import_module("apps.costs.migrations.0009_endpoint_api_key_encrypted")
    migration.encrypt_plaintext_keys(registry, None)
    pasted.refresh_from_db()
    named.refresh_from_db()
    assert pasted.api_key_env == "" and "sk-live" not in pasted.api_key_encrypted
    assert pasted.api_key_hint == "sk-...1234"
    assert endpoint_api_key(pasted) == "sk-live-abcdefghijklmnop1234"
    assert named.api_key_env == "OPENAI_API_KEY" and named.api_key_encrypted == ""
