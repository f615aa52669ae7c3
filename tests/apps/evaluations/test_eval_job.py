"""An evaluation job: the worst case held before anything runs, each question billed and settled on its own,
scored with the benchmarks' metrics; refused whole when a budget cannot cover it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.models import Job
from apps.costs import metering
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.services import BudgetExceeded, budget_save
from apps.evaluations.models import EvalRow, EvalRun
from apps.evaluations.selectors import eval_run_labelled_rows, eval_run_summary
from apps.evaluations.services import eval_run_estimate, eval_run_start
from apps.rag.models import QueryRun
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db


@pytest.mark.slow  # the quality check loads and measures MiniLM
def test_it_runs_every_question_through_every_pipeline_settling_each(
    team_a, alice, eval_set, make_pipeline, passages, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(metering, "_target_override", lambda e: EchoTarget(name=e.name, reply="It was 1889."))
    one, two = make_pipeline("one"), make_pipeline("two", top_k=1)
    with django_capture_on_commit_callbacks(execute=True):  # the job runs in-process once the start commits
        run = eval_run_start(team=team_a, eval_set=eval_set, pipelines=[one, two], user=alice)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.job.status == "succeeded" and run.job.progress_done == run.job.progress_total == 4
    rows = list(EvalRow.objects.filter(run=run).order_by("pipeline_name", "position"))
    assert [(r.pipeline_name, r.item_id, r.contained) for r in rows] == [
        ("one", "eiffel-year", 1.0), ("one", "capital", 0.0), ("two", "eiffel-year", 1.0), ("two", "capital", 0.0),
    ]
    assert rows[0].f1 == 0.5 and rows[0].exact_match == 0.0  # "it was 1889" vs "1889": P 1/3, R 1
    for row in rows:
        query = row.query_run
        assert query.status == "succeeded" and query.answer == row.answer
        # Each question was held and settled on its own, to its own ledger rows.
        ledger = sum(r.cost for r in UsageRecord.objects.filter(query_run_id=query.pk))
        assert query.reservation.status == ReservationStatus.SETTLED and query.reservation.actual == ledger
        assert row.cost == ledger and row.quality_label == query.quality_label
    assert run.cost == sum(r.cost for r in rows) > 0
    # The worst case held at the start covers what ran; nothing stays held after the job.
    assert run.estimate >= run.cost
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
    summary = {s["pipeline"]: s for s in eval_run_summary(eval_run=run)}
    assert summary["one"]["contained"] == 0.5 and summary["one"]["correct"] == 1
    assert summary["one"]["cost_of_pass"] == summary["one"]["cost"] / 1
    assert summary["one"]["cost_per_question"] == summary["one"]["cost"] / 2
    labelled = eval_run_labelled_rows(eval_run=run, pipeline_name="two")
    assert [(r["item_id"], r["correct"]) for r in labelled] == [("eiffel-year", True), ("capital", False)]
    assert set(labelled[0]) >= {"question", "gold", "answer", "contained", "f1", "cost", "latency_ms",
                                "quality_label", "quality", "correct"}


def test_a_budget_too_small_for_the_worst_case_refuses_the_whole_run(team_a, alice, eval_set, make_pipeline):
    pipelines = [make_pipeline("one"), make_pipeline("two")]
    estimate = eval_run_estimate(eval_set=eval_set, pipelines=pipelines)
    assert estimate > 0
    budget = budget_save(team=team_a, hard_limit=estimate - Decimal("0.0000000001"), period="month")
    jobs = Job.objects.count()
    with pytest.raises(BudgetExceeded) as refused:
        eval_run_start(team=team_a, eval_set=eval_set, pipelines=pipelines, user=alice)
    assert refused.value.detail["budget_id"] == budget.pk
    assert not EvalRun.objects.exists() and not QueryRun.objects.exists() and Job.objects.count() == jobs
    assert not Reservation.objects.exists() and not UsageRecord.objects.exists()


def test_another_teams_set_or_pipeline_is_refused(team_a, team_b, eval_set, make_pipeline):
    from apps.core.errors import ValidationFailed
    from apps.rag.services import pipeline_save

    theirs = pipeline_save(team=team_b, name="theirs", model_endpoint="smollm2-135m-instruct", retriever="none")
    with pytest.raises(ValidationFailed, match="unknown pipeline"):
        eval_run_start(team=team_a, eval_set=eval_set, pipelines=[theirs])
    with pytest.raises(ValidationFailed, match="unknown evaluation set"):
        eval_run_start(team=team_b, eval_set=eval_set, pipelines=[theirs])
    with pytest.raises(ValidationFailed, match="at least one pipeline"):
        eval_run_start(team=team_a, eval_set=eval_set, pipelines=[])


@pytest.mark.slow  # the real SmolLM2 generates, MiniLM quotes and checks
def test_a_real_model_and_an_extractive_pipeline_side_by_side(
    team_a, alice, eval_set, make_pipeline, passages, smollm2, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.costs.models import Stage

    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    naive = make_pipeline("naive")
    quotes = make_pipeline("quotes", prompting_strategy="extractive_answer")
    with django_capture_on_commit_callbacks(execute=True):
        run = eval_run_start(team=team_a, eval_set=eval_set, pipelines=[naive, quotes], user=alice)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    rows = {(r.pipeline_name, r.item_id): r for r in EvalRow.objects.filter(run=run)}
    assert len(rows) == 4 and all(r.status == "succeeded" for r in rows.values())
    # The extractive pipeline quotes the passage: right, and no generation billed at all.
    quoted = rows[("quotes", "eiffel-year")]
    assert "1889" in quoted.answer and quoted.contained == 1.0 and quoted.f1 > 0
    for name, item in rows:
        stages = set(UsageRecord.objects.filter(query_run_id=rows[(name, item)].query_run_id)
                     .values_list("stage", flat=True))
        assert (Stage.GENERATE in stages) == (name == "naive"), (name, item, stages)
    summary = {s["pipeline"]: s for s in eval_run_summary(eval_run=run)}
    assert summary["naive"]["cost_per_question"] > summary["quotes"]["cost_per_question"] > 0
    assert summary["quotes"]["frontier"]  # the cheapest pipeline is always on the frontier
    assert summary["quotes"]["cost_of_pass"] == summary["quotes"]["cost"] / summary["quotes"]["correct"]
    assert run.cost == sum(r.cost for r in rows.values()) <= run.estimate
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
