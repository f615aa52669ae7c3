"""Savings measured, not extrapolated: how a run's naive baseline is obtained, and shadow baselines.

The claimed baseline prices the naive prompt's tokens exactly and, for device time, asks the cost
model (never the real run's seconds scaled); a shadow run answers the same question with the naive
pipeline for real, billed to the operator team, and the selector compares the two.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest

from apps.accounts.models import Team
from apps.core.models import Job
from apps.costs import metering
from apps.costs.baseline import naive_generation_cost
from apps.costs.cost_model import device_cost, device_seconds_estimate
from apps.costs.models import Stage, UsageRecord
from apps.costs.pricing import Usage, cost_of, price_charged
from apps.costs.selectors import team_budget_statuses
from apps.costs.services import budget_save
from apps.rag.models import QueryRun
from apps.rag.selectors import savings_accuracy, savings_accuracy_overall
from apps.rag.services import pipeline_save, query_run_start
from tests.apps.rag.conftest import fake_search_hits

PASSAGES = [
    ("List of Nobel laureates in Physics",
     "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany, "
     "for the discovery of X-rays. Röntgen donated the prize money to his university."),
    ("Paris", "Paris is the capital and most populous city of France. It hosts the Louvre and many museums."),
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. "
     "It was completed in 1889 for the World's Fair."),
]
QUESTION = "who got the first nobel prize in physics"


def _row(**values) -> SimpleNamespace:
    """A ledger row's usage and charged prices (what naive_generation_cost reads)."""
    defaults = dict(
        prompt_tokens=100, completion_tokens=20, cached_tokens=0, gpu_seconds=Decimal(0), cpu_seconds=Decimal(0),
        price_input_per_mtok=Decimal(0), price_output_per_mtok=Decimal(0), price_cached_input_per_mtok=None,
        price_per_gpu_second=Decimal("0.0006"), price_per_cpu_second=Decimal("0.00002"),
    )
    return SimpleNamespace(**{**defaults, **values})


def test_a_token_priced_baseline_is_exact():
    row = _row(price_input_per_mtok=Decimal("0.15"), price_output_per_mtok=Decimal("0.60"))
    cost, kind = naive_generation_cost(record=row, prompt_tokens=900, model="gpt-4o-mini")
    assert kind == "exact"
    assert cost == cost_of(usage=Usage(prompt_tokens=900, completion_tokens=20), price=price_charged(row))
    assert cost == Decimal("0.0001470000")  # 900 × $0.15/M + 20 × $0.60/M


def test_device_time_comes_from_the_cost_model_not_the_real_runs_seconds_scaled(db):
    """A slow compressed run (many seconds for few tokens) used to inflate its own baseline by the token
    ratio; the baseline now does not depend on how long the real run took."""
    fast = _row(cpu_seconds=Decimal("1.5"))
    slow = _row(cpu_seconds=Decimal("40"))
    fast_cost, kind = naive_generation_cost(record=fast, prompt_tokens=900, model="local/smollm2-135m-instruct")
    slow_cost, _ = naive_generation_cost(record=slow, prompt_tokens=900, model="local/smollm2-135m-instruct")
    assert kind == "estimate" and fast_cost == slow_cost
    seconds, _ = device_seconds_estimate(model="local/smollm2-135m-instruct", tokens_in=900, tokens_out=20)
    assert fast_cost == device_cost(price=price_charged(fast), seconds=seconds, device="cpu")
    # Charged GPU seconds: the counterfactual is priced at the GPU-second price the run was charged.
    gpu_cost, _ = naive_generation_cost(record=_row(gpu_seconds=Decimal("0.2")), prompt_tokens=900,
                                        model="local/smollm2-135m-instruct")
    assert gpu_cost == device_cost(price=price_charged(fast), seconds=seconds, device="cuda") > fast_cost


def test_a_run_that_generated_nothing_is_compared_with_an_estimated_naive_generation(db):
    """An extractive answer has no generation row: the naive generation is priced at the endpoint's price with
    the quote's length as its output, an estimate even for token prices (the output length is assumed)."""
    from apps.costs.baseline import naive_generation_estimate

    row = _row(price_input_per_mtok=Decimal("0.15"), price_output_per_mtok=Decimal("0.60"))
    cost, kind = naive_generation_estimate(price=price_charged(row), prompt_tokens=900, completion_tokens=20,
                                           model="gpt-4o-mini", local=False)
    assert (cost, kind) == (Decimal("0.0001470000"), "estimate")
    local = price_charged(_row())
    cost, kind = naive_generation_estimate(price=local, prompt_tokens=900, completion_tokens=20,
                                           model="local/smollm2-135m-instruct", local=True)
    seconds, device = device_seconds_estimate(model="local/smollm2-135m-instruct", tokens_in=900, tokens_out=20,
                                              price=local)
    assert kind == "estimate" and cost == device_cost(price=local, seconds=seconds, device=device) > 0


@pytest.fixture
def local_model(smollm2, monkeypatch, settings, tmp_path):
    settings.DATA_ROOT = tmp_path
    settings.PARSIMONY_OPERATOR_TEAM = "operators"
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES, first_pk=300)
    return smollm2


def _pipelines(team):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team, name="facts")
    common = dict(model_endpoint="smollm2-135m-instruct", corpora=[corpus], max_output_tokens=12, top_k=3)
    return [
        pipeline_save(team=team, name="naive", **common),
        pipeline_save(team=team, name="extractive", compression_method="extractive", compression_target=0.5,
                      **common),
        pipeline_save(team=team, name="sp", prompting_strategy="superposition", **common),
    ]


@pytest.fixture
def ask(django_capture_on_commit_callbacks):
    """Ask through the job queue as the web does: the query job, then the shadow job it enqueues, run
    in-process as their transactions commit."""

    def ask(team, user, pipeline) -> QueryRun:
        with django_capture_on_commit_callbacks(execute=True):
            run = query_run_start(team=team, user=user, pipeline=pipeline, question=QUESTION)
        return QueryRun.objects.get(pk=run.pk)

    return ask


@pytest.mark.slow
def test_a_shadow_baseline_is_billed_to_the_operator_and_measures_the_claim(team_a, alice, local_model, settings, ask):
    settings.PARSIMONY_SHADOW_BASELINE = 1.0
    budget_save(team=team_a, hard_limit=Decimal("5"))
    assert not Team.objects.filter(slug="operators").exists()
    runs = {pipeline.name: ask(team_a, alice, pipeline) for pipeline in _pipelines(team_a)}

    operator = Team.objects.get(slug="operators")  # created on demand
    for name, run in runs.items():
        run.refresh_from_db()
        assert run.status == "succeeded" and run.baseline_kind == "estimate"  # local model: device time
        shadow_rows = UsageRecord.objects.filter(shadow_of_query_run_id=run.pk)
        # naive: no compress; the embed row is the answer's quality check (workers.rag.quality)
        assert {row.stage for row in shadow_rows} == {Stage.RETRIEVE, Stage.GENERATE, Stage.EMBED}
        assert {row.team_id for row in shadow_rows} == {operator.pk}
        assert {row.pipeline_name for row in shadow_rows} == {f"shadow:{name}"}
        assert not shadow_rows.filter(query_run_id__isnull=False).exists()
        assert run.measured_baseline_cost == sum(row.cost for row in shadow_rows) > 0
        # The run's own cost is its own rows only; the team paid nothing for the shadow.
        assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
        job = Job.objects.get(kind="rag.shadow_baseline", params__query_run_id=run.pk)
        assert job.status == "succeeded" and job.queue == "gpu" and job.team_id == operator.pk
    team_spend = sum(r.cost for r in UsageRecord.objects.filter(team=team_a))
    assert team_spend == sum(run.cost for run in runs.values())
    (status,) = team_budget_statuses(team=team_a)
    assert status.spent == team_spend
    assert sum(r.cost for r in UsageRecord.objects.filter(team=operator)) == sum(
        run.measured_baseline_cost for run in runs.values()
    )
    # The extra work of a pipeline is in its actual cost, never assumed away from the baseline.
    assert UsageRecord.objects.filter(query_run_id=runs["extractive"].pk, stage=Stage.COMPRESS).exists()

    accuracy = savings_accuracy(team=team_a)
    assert set(accuracy) == {"naive", "extractive", "sp"}
    for name, run in runs.items():
        row = accuracy[name]
        assert row["runs"] == 1
        assert row["claimed_baseline_usd"] == run.baseline_cost
        assert row["measured_baseline_usd"] == run.measured_baseline_cost
        assert row["error"] == pytest.approx(float(run.baseline_cost / run.measured_baseline_cost - 1))
    overall = savings_accuracy_overall(team=team_a)
    assert overall["runs"] == 3 and overall["measured_baseline_usd"] == sum(
        r.measured_baseline_cost for r in runs.values()
    )
    assert savings_accuracy(team=operator) == {}  # per team: the operator asked nothing


@pytest.mark.slow
def test_an_operator_budget_refuses_the_shadow_never_the_teams_answer(team_a, alice, local_model, settings, ask):
    settings.PARSIMONY_SHADOW_BASELINE = 1.0
    operator = Team.objects.create(name="Operators", slug="operators")
    budget_save(team=operator, hard_limit=Decimal("0"))
    (naive, *_rest) = _pipelines(team_a)
    run = ask(team_a, alice, naive)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.answer and run.measured_baseline_cost is None
    assert not UsageRecord.objects.filter(shadow_of_query_run_id=run.pk).exists()
    assert savings_accuracy(team=team_a) == {}


@pytest.mark.slow
def test_no_shadow_runs_when_the_fraction_is_zero(team_a, alice, local_model, settings, ask):
    settings.PARSIMONY_SHADOW_BASELINE = 0.0
    (naive, *_rest) = _pipelines(team_a)
    run = ask(team_a, alice, naive)
    assert run.status == "succeeded" and run.baseline_kind == "estimate" and run.measured_baseline_cost is None
    assert not Job.objects.filter(kind="rag.shadow_baseline").exists()
    assert not Team.objects.filter(slug="operators").exists()
