"""The prefill job's own compute in the ledger: one `prefill` row per job, budget checked before it runs."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.utils import timezone

from apps.core.models import Job
from apps.costs.defaults import CPU_PER_SECOND
from apps.costs.models import Reservation, UsageRecord
from apps.costs.pricing import Usage, cost_of
from apps.costs.services import BudgetExceeded, budget_save, price_current, reservations_expire
from apps.rag import fixed_context
from apps.rag.fixed_context import (
    PREFILL_STAGE,
    fixed_context_prefill_execute,
    fixed_context_prefill_start,
)
from apps.rag.services import pipeline_save
from tests.apps.rag.test_fixed_context_pipeline import local_model  # noqa: F401 - fixture (smollm2: tests/conftest.py)
from tests.workers.attention.handbook import HANDBOOK
from workers.tasks.base import Progress

COMPUTED = {
    "context_tokens": 700, "document_tokens": 690, "truncated_tokens": 0, "kv_computed": True, "prefill_s": 1.0,
    "indexes": {"squeezed-abc": {"computed": True, "build_s": 0.25}}, "stored_bytes": 1234,
}
CACHED = {**COMPUTED, "kv_computed": False, "indexes": {"squeezed-abc": {"computed": False, "build_s": 0.0}}}


@pytest.fixture
def engine(monkeypatch):
    """The engine's prepare_fixed_context replaced by a report (what the real one returns), on a CPU "model"."""
    state = SimpleNamespace(report=dict(COMPUTED), calls=0, fail=False)

    def prepare(lm, store, *, progress=None, **kwargs):
        state.calls += 1
        if state.fail:
            raise RuntimeError("the worker died mid-prefill")
        if progress is not None:
            progress(1.0, "ready")
        return dict(state.report)

    monkeypatch.setattr("workers.attention.fixed_context.prepare_fixed_context", prepare)
    monkeypatch.setattr(fixed_context, "_local_model", lambda pipeline: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(fixed_context, "kv_store", lambda: None)
    return state


@pytest.fixture
def handbook(team_a):
    return pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct",
                         fixed_context=HANDBOOK, attention_backend="squeezed")


def _run(pipeline, user, capture, **kwargs) -> Job:
    with capture(execute=True):
        job = fixed_context_prefill_start(pipeline=pipeline, user=user, **kwargs)
    return Job.objects.get(pk=job.pk)


def test_it_bills_the_prefill_as_one_prefill_row_of_the_pipelines_team(
    team_a, alice, handbook, engine, django_capture_on_commit_callbacks
):
    job = _run(handbook, alice, django_capture_on_commit_callbacks)
    assert job.status == "succeeded", job.error
    row = UsageRecord.objects.get(stage=PREFILL_STAGE)
    assert (row.team, row.user, row.pipeline_name) == (team_a, alice, "handbook")
    assert row.model_name == "local/smollm2-135m-instruct" and row.endpoint == handbook.model_endpoint
    assert row.prompt_tokens == 700 and row.completion_tokens == row.cached_tokens == 0
    assert row.cpu_seconds == Decimal("1.25") and row.gpu_seconds == 0  # the prefill and the index build
    assert row.cost == cost_of(usage=Usage(prompt_tokens=700, cpu_seconds=Decimal("1.25")), price=row.price) > 0
    assert row.price_per_cpu_second == CPU_PER_SECOND  # the price it was charged at, copied
    reservation = Reservation.objects.get(pk=job.params["reservation_id"])
    assert reservation.status == "settled" and reservation.actual == row.cost and row.reservation == reservation
    assert job.result["billed"] == {"usage_record_id": row.pk, "cost": str(row.cost)}
    assert job.result["context_tokens"] == 700


def test_a_prefill_slower_than_its_hold_is_billed_up_to_the_hold(
    alice, handbook, engine, django_capture_on_commit_callbacks
):
    engine.report["prefill_s"] = 600.0  # far past what the cost model's bound reserved
    job = _run(handbook, alice, django_capture_on_commit_callbacks)
    assert job.status == "succeeded", job.error
    row = UsageRecord.objects.get(stage=PREFILL_STAGE)
    reservation = Reservation.objects.get(pk=job.params["reservation_id"])
    assert 0 < row.cpu_seconds < Decimal("600") and row.prompt_tokens == 700
    assert reservation.actual == row.cost <= reservation.estimate  # the seconds past the hold are not billed


def test_a_retry_of_the_same_job_does_not_bill_twice(alice, handbook, engine, django_capture_on_commit_callbacks):
    job = _run(handbook, alice, django_capture_on_commit_callbacks)
    again = fixed_context_prefill_execute(params=job.params, progress=Progress(job.pk))
    assert UsageRecord.objects.filter(stage=PREFILL_STAGE).count() == 1
    assert again["billed"]["usage_record_id"] == job.result["billed"]["usage_record_id"]


def test_a_failed_attempt_gives_its_hold_back_and_the_retry_bills_once(
    alice, handbook, engine, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):  # queued, not run
        job = fixed_context_prefill_start(pipeline=handbook, user=alice)
    engine.fail = True
    with pytest.raises(RuntimeError):
        fixed_context_prefill_execute(params=job.params, progress=Progress(job.pk))
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == "released"
    assert not UsageRecord.objects.filter(stage=PREFILL_STAGE).exists()
    engine.fail = False
    for _ in range(2):  # the retry, then a redelivery of the same message
        params = Job.objects.get(pk=job.pk).params
        fixed_context_prefill_execute(params=params, progress=Progress(job.pk))
    row = UsageRecord.objects.get(stage=PREFILL_STAGE)
    renewed = Job.objects.get(pk=job.pk).params["reservation_id"]
    assert renewed != job.params["reservation_id"] and row.reservation_id == renewed and row.user == alice


def test_a_job_that_finds_everything_stored_bills_nothing_and_gives_its_hold_back(
    alice, handbook, engine, django_capture_on_commit_callbacks
):
    engine.report = dict(CACHED)
    job = _run(handbook, alice, django_capture_on_commit_callbacks)
    assert job.status == "succeeded" and job.result["billed"] is None
    assert not UsageRecord.objects.exists()
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == "released"


def test_an_over_budget_team_is_refused_before_the_job_exists(
    team_a, alice, handbook, engine, django_capture_on_commit_callbacks
):
    budget_save(team=team_a, hard_limit=Decimal("0.0000001"), period="day")
    with pytest.raises(BudgetExceeded, match="the day budget of team 'Team A' would be exceeded"):
        _run(handbook, alice, django_capture_on_commit_callbacks)
    assert not Job.objects.exists() and not Reservation.objects.exists() and engine.calls == 0


def test_a_job_whose_hold_expired_in_the_queue_checks_the_budget_again_before_it_runs(
    team_a, alice, handbook, engine, django_capture_on_commit_callbacks
):
    budget = budget_save(team=team_a, hard_limit=Decimal("10"), period="day")
    with django_capture_on_commit_callbacks(execute=False):
        job = fixed_context_prefill_start(pipeline=handbook, user=alice)
    assert reservations_expire(now=timezone.now() + timedelta(hours=3)) == 1
    budget_save(team=team_a, budget=budget, hard_limit=Decimal("0.0000001"), period="day")
    with pytest.raises(BudgetExceeded):
        fixed_context_prefill_execute(params=job.params, progress=Progress(job.pk))
    assert engine.calls == 0 and not UsageRecord.objects.exists()


def test_the_hold_is_the_context_at_most_one_window_at_the_cost_models_prefill_bound(handbook):
    from apps.costs.cost_model import device_cost, device_seconds_bound

    price = price_current(model_name="local/smollm2-135m-instruct")
    tokens = min(fixed_context.fixed_context_token_estimate(pipeline=handbook), 8192)
    seconds, device = device_seconds_bound(model=price.model_name, tokens_in=tokens, price=price)
    assert fixed_context.fixed_context_prefill_estimate(pipeline=handbook) == cost_of(
        usage=Usage(prompt_tokens=tokens), price=price) + device_cost(price=price, seconds=seconds, device=device)


@pytest.mark.slow
def test_the_real_prefill_bills_the_context_tokens_it_prefilled_once(
    team_a, alice, local_model, django_capture_on_commit_callbacks  # noqa: F811 - the imported fixture
):
    from workers.attention.fixed_context import clear_process_cache

    pipeline = pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct",
                             fixed_context=HANDBOOK)
    first = _run(pipeline, alice, django_capture_on_commit_callbacks)
    assert first.status == "succeeded", first.error
    row = UsageRecord.objects.get(stage=PREFILL_STAGE)
    assert row.prompt_tokens == first.result["context_tokens"] > 500
    assert row.cpu_seconds > 0 and row.cost > 0 and row.pipeline_name == "handbook"
    fixed_context_prefill_execute(params=first.params, progress=Progress(first.pk))  # a redelivery
    clear_process_cache()
    second = _run(pipeline, alice, django_capture_on_commit_callbacks)  # finds the KV stored
    assert second.status == "succeeded" and not second.result["kv_computed"]
    assert UsageRecord.objects.filter(stage=PREFILL_STAGE).count() == 1
