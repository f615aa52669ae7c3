"""The price book: versioned prices, exact arithmetic, and the LiteLLM importer (idempotent, keeps history)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from apps.costs.metering import model_call
from apps.costs.models import Price, UsageRecord
from apps.costs.pricing import Usage, cost_of, worst_case_cost
from apps.costs.services import PriceMissing, price_current, price_set
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db

LITELLM = Path(settings.SHARED_DATA_DIR) / "llm-prices" / "litellm-1.110.2_model_prices_and_context_window.json"


def test_it_computes_cost_as_tokens_times_price_exactly():
    price = Price(
        input_per_mtok=Decimal("2.50"), output_per_mtok=Decimal("10"), cached_input_per_mtok=Decimal("1.25")
    )
    usage = Usage(prompt_tokens=1234, completion_tokens=567, cached_tokens=200)
    expected = (Decimal(1034) * Decimal("2.50") + 200 * Decimal("1.25") + 567 * Decimal(10)) / 1_000_000
    assert cost_of(usage=usage, price=price) == expected == Decimal("0.008505")
    assert worst_case_cost(price=price, prompt_tokens=1000, max_output_tokens=100) == Decimal("0.0035")


def test_it_charges_device_seconds_without_float_noise():
    price = Price(input_per_mtok=Decimal(0), output_per_mtok=Decimal(0), per_gpu_second=Decimal("0.0011111111"))
    usage = Usage(gpu_seconds=Decimal("0.1"))
    assert cost_of(usage=usage, price=price) == Decimal("0.0001111111")


def test_a_price_change_leaves_old_rows_unchanged_and_new_calls_pay_the_new_price(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="a b")
    messages = [{"role": "user", "content": "x y z"}]
    old = model_call(endpoint=echo_endpoint, messages=messages, context=ctx).record
    assert old.cost == Decimal(3 * 1 + 2 * 2)

    new_price, created = price_set(
        model_name="test/echo",
        input_per_mtok=Decimal(10_000_000),
        output_per_mtok=Decimal(20_000_000),
        effective_from=timezone.now() + timedelta(seconds=1),
    )
    assert created
    # Before the new price takes effect, calls still pay the old one.
    assert model_call(endpoint=echo_endpoint, messages=messages, context=ctx).cost == Decimal(7)
    Price.objects.filter(pk=new_price.pk).update(effective_from=timezone.now() - timedelta(microseconds=1))
    new = model_call(endpoint=echo_endpoint, messages=messages, context=ctx).record
    assert new.cost == Decimal(3 * 10 + 2 * 20)
    assert new.price_id == new_price.pk

    old.refresh_from_db()
    assert old.cost == Decimal(7)
    assert (old.price_input_per_mtok, old.price_output_per_mtok) == (Decimal(1_000_000), Decimal(2_000_000))
    assert sorted(UsageRecord.objects.values_list("cost", flat=True)) == [Decimal(7), Decimal(7), Decimal(70)]


def test_it_looks_up_the_price_in_force_at_a_date(db):
    jan, feb = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    price_set(model_name="m", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2), effective_from=jan)
    price_set(model_name="m", input_per_mtok=Decimal(3), output_per_mtok=Decimal(4), effective_from=feb)
    assert price_current(model_name="m", at=jan + timedelta(days=3)).input_per_mtok == 1
    assert price_current(model_name="m", at=feb).input_per_mtok == 3
    with pytest.raises(PriceMissing, match="no price for model 'm'"):
        price_current(model_name="m", at=jan - timedelta(days=1))


def test_setting_the_same_price_again_adds_nothing(db):
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    _, first = price_set(model_name="m", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2), effective_from=jan)
    _, again = price_set(
        model_name="m",
        input_per_mtok=Decimal("1.0"),
        output_per_mtok=Decimal(2),
        effective_from=jan + timedelta(days=9),
    )
    assert (first, again) == (True, False)
    assert Price.objects.filter(model_name="m").count() == 1


@pytest.fixture
def no_bundled_prices(db):
    """The price book without the remote models' prices the migrations load (apps/costs/price_table.py)."""
    from auditlog.context import disable_auditlog

    with disable_auditlog():  # 3,500 audit entries for a fixture's clean-up would cost a minute
        Price.objects.exclude(provider="local").delete()


def _import(path: Path, *args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("import_prices", str(path), *args, stdout=out)
    return out.getvalue()


TINY = {
    "sample_spec": {"input_cost_per_token": 0},
    "gpt-tiny": {
        "mode": "chat",
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6e-07,
        "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "openai",
    },
    "claude-tiny": {"mode": "chat", "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
    "embed-tiny": {"mode": "embedding", "input_cost_per_token": 2e-08, "output_cost_per_token": 0},
    "image-tiny": {"mode": "image_generation", "output_cost_per_image": 0.04},
    "no-price": {"mode": "chat"},
}


def test_import_prices_reads_a_litellm_table_exactly_idempotently_and_keeps_history(no_bundled_prices, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TINY))
    assert "2 added, 0 unchanged, 3 skipped" in _import(path, "--effective-from", "2026-01-01")
    gpt = Price.objects.get(model_name="gpt-tiny")
    # 1.5e-07 per token is $0.15 per 1M exactly (through str, no binary noise).
    assert (gpt.input_per_mtok, gpt.output_per_mtok, gpt.cached_input_per_mtok) == (
        Decimal("0.15"), Decimal("0.6"), Decimal("0.075")
    )
    assert gpt.provider == "openai" and gpt.source == "prices.json"
    assert gpt.effective_from == datetime(2026, 1, 1, tzinfo=UTC)

    assert "0 added, 2 unchanged" in _import(path, "--effective-from", "2026-01-01")
    assert "0 added, 2 unchanged" in _import(path)  # same prices later: still nothing new
    assert Price.objects.count() == 2 + 3  # + the seeded local prices

    changed = {**TINY, "gpt-tiny": {**TINY["gpt-tiny"], "input_cost_per_token": 2e-07}}
    path.write_text(json.dumps(changed))
    assert "1 added, 1 unchanged" in _import(path, "--effective-from", "2026-03-01")
    history = list(Price.objects.filter(model_name="gpt-tiny").order_by("effective_from"))
    assert [p.input_per_mtok for p in history] == [Decimal("0.15"), Decimal("0.2")]
    assert price_current(model_name="gpt-tiny", at=datetime(2026, 2, 1, tzinfo=UTC)).input_per_mtok == Decimal("0.15")
    assert price_current(model_name="gpt-tiny", at=datetime(2026, 3, 2, tzinfo=UTC)).input_per_mtok == Decimal("0.2")


def test_import_prices_imports_embedding_entries_on_request(no_bundled_prices, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TINY))
    out = _import(path, "--all-modes", "--only", "gpt-tiny", "embed-tiny", "image-tiny")
    assert "2 added, 0 unchanged, 1 skipped" in out  # the image entry has no per-token price
    assert Price.objects.get(model_name="embed-tiny").input_per_mtok == Decimal("0.02")
    from auditlog.models import LogEntry

    # Written in bulk, each new price still has its audit entry.
    audited = LogEntry.objects.get_for_objects(Price.objects.filter(model_name__in=["gpt-tiny", "embed-tiny"]))
    assert audited.filter(action=LogEntry.Action.CREATE).count() == 2


def test_import_prices_refuses_a_missing_or_broken_file(db, tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="does not exist"):
        _import(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CommandError, match="not valid JSON"):
        _import(broken)


@pytest.mark.skipif(not LITELLM.exists(), reason=f"shared price data not present at {LITELLM}")
def test_import_prices_on_the_shared_litellm_table_is_idempotent_and_keeps_history(no_bundled_prices, tmp_path):
    from auditlog.context import disable_auditlog

    with disable_auditlog():  # the audit entries of an import are checked on the small table above
        _shared_table_import_is_idempotent(tmp_path)


def _shared_table_import_is_idempotent(tmp_path) -> None:
    first = _import(LITELLM, "--effective-from", "2026-01-01")
    added = Price.objects.exclude(provider="local").count()
    assert added > 100, first
    assert f"{added} added" in first
    assert "0 added" in _import(LITELLM, "--effective-from", "2026-01-01")
    assert Price.objects.exclude(provider="local").count() == added

    table = json.loads(LITELLM.read_text())
    priced = set(Price.objects.values_list("model_name", flat=True))
    names = [n for n in table if n in priced][:3]
    modified = {
        name: {**table[name], "input_cost_per_token": table[name]["input_cost_per_token"] * 2}
        for name in names
    }
    for name in names:
        if not modified[name]["input_cost_per_token"]:
            modified[name]["input_cost_per_token"] = 1e-06
    path = tmp_path / "modified.json"
    path.write_text(json.dumps(modified))
    assert "3 added" in _import(path, "--effective-from", "2026-06-01")
    assert Price.objects.exclude(provider="local").count() == added + 3
    for name in names:
        history = Price.objects.filter(model_name=name).order_by("effective_from")
        assert history.count() == 2
        assert history[0].effective_from == datetime(2026, 1, 1, tzinfo=UTC)


def test_import_prices_on_the_same_date_with_other_values_replaces_that_row(no_bundled_prices, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TINY))
    _import(path, "--effective-from", "2026-01-01")
    changed = {**TINY, "gpt-tiny": {**TINY["gpt-tiny"], "output_cost_per_token": 8e-07}}
    path.write_text(json.dumps(changed))
    assert "1 added, 1 unchanged" in _import(path, "--effective-from", "2026-01-01")
    rows = Price.objects.filter(model_name="gpt-tiny")
    assert [(p.output_per_mtok, p.input_per_mtok) for p in rows] == [(Decimal("0.8"), Decimal("0.15"))]
