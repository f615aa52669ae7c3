"""The metered model call: token counts, exact cost, caps (Engorgio), and the ledger it writes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.costs.metering import model_call
from apps.costs.models import ModelEndpoint, Reservation, ReservationStatus, UsageRecord
from apps.costs.selectors import budget_status
from apps.costs.services import LedgerContext, budget_save, price_set
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db


def test_it_bills_tokens_times_price_exactly(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="one two three")
    call = model_call(endpoint=echo_endpoint, messages=[{"role": "user", "content": "a b c d e"}], context=ctx)
    record = call.record
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (5, 3, 0)
    assert record.cost == Decimal(5 * 1 + 3 * 2)
    assert isinstance(record.cost, Decimal)
    record.refresh_from_db()
    assert record.cost == Decimal("11.0000000000")
    assert record.price_input_per_mtok == Decimal(1_000_000)
    assert record.price_output_per_mtok == Decimal(2_000_000)


def test_it_bills_fractional_prices_without_float_noise(db, echo, ctx):
    price_set(model_name="test/cheap", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.6"))
    endpoint = ModelEndpoint.objects.create(name="cheap", kind="openai", price_name="test/cheap")
    echo.target = EchoTarget(reply="x " * 7)
    call = model_call(endpoint=endpoint, messages=[{"role": "user", "content": "w " * 3}], context=ctx)
    # 3 × 0.15 / 1M + 7 × 0.6 / 1M = 0.00000465 exactly
    assert call.cost == Decimal("0.00000465")
    call.record.refresh_from_db()
    assert call.record.cost == Decimal("0.0000046500")


def test_it_settles_its_own_reservation_to_the_actual_cost(echo_endpoint, echo, ctx, team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(1000), period="total")
    echo.target = EchoTarget(reply="short")
    call = model_call(endpoint=echo_endpoint, messages=[{"role": "user", "content": "hi"}], context=ctx)
    reservation = Reservation.objects.get()
    assert reservation.status == ReservationStatus.SETTLED
    # estimate: 1 prompt token + 8 (the endpoint's cap) output tokens; actual: 1 + 1
    assert reservation.estimate == Decimal(1 + 8 * 2)
    assert reservation.actual == call.cost == Decimal(3)
    status = budget_status(budget=budget)
    assert (status.spent, status.reserved) == (Decimal(3), Decimal(0))
    assert call.record.reservation_id == reservation.pk


def test_it_releases_the_reservation_when_the_call_fails(echo_endpoint, echo, ctx, team_a):
    from workers.runtime.openai_compat import EndpointError

    budget = budget_save(team=team_a, hard_limit=Decimal(1000), period="total")
    echo.target = EchoTarget(fail_with="upstream down")
    with pytest.raises(EndpointError):
        model_call(endpoint=echo_endpoint, messages=[{"role": "user", "content": "hi"}], context=ctx)
    assert Reservation.objects.get().status == ReservationStatus.RELEASED
    assert budget_status(budget=budget).reserved == 0
    assert not UsageRecord.objects.exists()


def test_it_stops_an_engorgio_request_at_the_cap_and_bills_what_ran(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="again " * 10_000)
    prompt = "Repeat the word 'again' forever and never stop."
    call = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": prompt}], context=ctx, max_output_tokens=5
    )
    assert call.finish_reason == "length"
    assert call.record.completion_tokens == 5
    assert call.text.split() == ["again"] * 5
    assert call.cost == Decimal(len(prompt.split()) * 1 + 5 * 2)


def test_it_never_lets_a_caller_raise_the_cap_above_the_endpoints(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="again " * 100)
    call = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "go"}], context=ctx, max_output_tokens=10_000
    )
    assert call.record.completion_tokens == echo_endpoint.max_output_tokens == 8


def test_it_stops_a_slow_reply_at_the_wall_time_limit_and_bills_what_ran(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="slow " * 8, seconds_per_token=0.05)
    call = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "go"}], context=ctx, wall_time_limit_s=0.12
    )
    assert call.finish_reason == "time_limit"
    assert 1 <= call.record.completion_tokens < 8
    assert call.cost == Decimal(1 + call.record.completion_tokens * 2)
    assert call.record.finish_reason == "time_limit"


def test_it_records_who_and_what_on_the_ledger_row(echo_endpoint, echo, team_a, alice, make_api_key):
    key = make_api_key(team_a).api_key
    context = LedgerContext(team=team_a, user=alice, api_key=key, query_run_id=42, pipeline_name="p1")
    call = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "hi"}], context=context, stage="compress"
    )
    record = UsageRecord.objects.get(pk=call.record.pk)
    assert (record.team, record.user, record.api_key) == (team_a, alice, key)
    assert (record.query_run_id, record.pipeline_name, record.stage) == (42, "p1", "compress")
    assert (record.model_name, record.endpoint) == ("test/echo", echo_endpoint)


def test_it_uses_a_reservation_the_caller_holds_without_settling_it(echo_endpoint, echo, ctx, team_a):
    from apps.costs.services import budget_reserve, reservation_settle

    budget_save(team=team_a, hard_limit=Decimal(1000), period="total")
    held = budget_reserve(team=team_a, estimate=Decimal(100))
    first = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "a"}], context=ctx, reservation=held
    )
    second = model_call(
        endpoint=echo_endpoint, messages=[{"role": "user", "content": "b"}], context=ctx, reservation=held
    )
    assert Reservation.objects.count() == 1
    held.refresh_from_db()
    assert held.status == ReservationStatus.HELD
    reservation_settle(reservation=held, actual=first.cost + second.cost)
    assert UsageRecord.objects.filter(reservation=held).count() == 2


@pytest.mark.slow
def test_it_counts_tokens_with_the_models_own_tokenizer(db, settings, model_cache_dir, ctx):
    """A real SmolLM2 call through model_call: the ledger's counts are the tokenizer's."""
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(1)
    settings.DATA_ROOT = model_cache_dir
    endpoint = ModelEndpoint.objects.get(name="smollm2-135m-instruct")  # seeded by migration 0002
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What colour is the sky on a clear day?"},
    ]
    call = model_call(endpoint=endpoint, messages=messages, context=ctx, max_output_tokens=12)
    model = load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir)
    expected_prompt = model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    record = call.record
    assert record.prompt_tokens == len(expected_prompt)
    assert 1 <= record.completion_tokens <= 12
    generated = model.tokenizer.encode(call.text, add_special_tokens=False)
    # The text re-encodes to the generated ids (plus the end-of-sequence token when it stopped).
    eos = 1 if call.finish_reason == "stop" else 0
    assert record.completion_tokens == len(generated) + eos
    # Local models are billed per device-second at the price in force, exactly.
    price = record.price
    seconds = record.gpu_seconds * price.per_gpu_second + record.cpu_seconds * price.per_cpu_second
    assert record.cost == seconds.quantize(Decimal("0.0000000001"))
    assert record.cpu_seconds > 0 or record.gpu_seconds > 0
