"""Bulk question jobs: the file checked, the whole job held first, rows answered k per prompt by the real
local model, each row's cost its exact share, the hold settled, finished rows never redone."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.bulk.models import BulkJob, BulkRow
from apps.bulk.selectors import bulk_result_file
from apps.bulk.services import bulk_input_parse, bulk_job_execute, bulk_job_start
from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.costs import metering
from apps.costs.models import BudgetWindow, Reservation, ReservationStatus, Stage, UsageRecord
from apps.costs.services import BudgetExceeded, budget_save
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save
from tests.apps.rag.conftest import fake_search_hits

pytestmark = pytest.mark.django_db

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889."),
    ("Paris", "Paris is the capital and most populous city of France."),
]
CSV = (b"id,question,gold\n"
       b"q1,When was the Eiffel Tower completed?,1889\n"
       b"q2,What is the capital of France?,Paris\n"
       b"q3,Where is the Eiffel Tower?,Paris\n")


@pytest.fixture
def pipeline(team_a, monkeypatch, settings, tmp_path):
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    fake_search_hits(monkeypatch, PASSAGES)
    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         max_output_tokens=12, top_k=2)


@pytest.fixture
def local_model(smollm2, monkeypatch):
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    return smollm2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("data", "name", "message"), [
    (b"", "q.csv", "empty"),
    (b"id,text\n1,hello\n", "q.csv", "no 'question' column"),
    (b"question\n\"unterminated\n", "q.csv", "malformed"),
    (b"question\nwhat?,extra\n", "q.csv", "more fields than the header"),
    (b"question\n   \n", "q.csv", "no questions"),
    (b'{"question": "a"}\nnot json\n', "q.jsonl", "line 2 is not JSON"),
    (b'{"q": "a"}\n', "q.jsonl", "not an object with a 'question'"),
    (b"id,question\n1,a\n1,b\n", "q.csv", "used twice"),
    (b"\xff\xfe\x00q", "q.csv", "not UTF-8"),
])
def test_a_bad_file_is_refused_with_a_clear_error(data, name, message):
    with pytest.raises(ValidationFailed, match=message):
        bulk_input_parse(data=data, filename=name)


def test_too_many_rows_are_refused(monkeypatch):
    from apps.bulk import services

    monkeypatch.setattr(services, "MAX_ROWS", 2)
    with pytest.raises(ValidationFailed, match="at most 2"):
        bulk_input_parse(data=CSV, filename="q.csv")


def test_csv_and_jsonl_read_the_same_rows():
    _, rows = bulk_input_parse(data=CSV, filename="q.csv")
    jsonl = b"".join(
        f'{{"id": "{r["row_id"]}", "question": "{r["question"]}", "gold": "{r["gold"]}"}}\n'.encode() for r in rows)
    assert bulk_input_parse(data=jsonl, filename="q.jsonl") == ("jsonl", rows)
    assert rows[0] == {"row_id": "q1", "question": "When was the Eiffel Tower completed?", "gold": "1889"}


def test_a_bad_file_stores_nothing_and_holds_nothing(team_a, alice, pipeline):
    with pytest.raises(ValidationFailed):
        bulk_job_start(team=team_a, pipeline=pipeline, data=b"nope\n1\n", filename="q.csv", user=alice)
    assert not BulkJob.objects.exists() and not Job.objects.exists() and not Reservation.objects.exists()


def test_batching_is_refused_where_the_pipeline_does_not_allow_it(team_a, alice, pipeline):
    pipeline.prompting_strategy = "superposition"
    pipeline.save()
    with pytest.raises(ValidationFailed, match="cannot batch"):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", batch_size=2, user=alice)
    assert not BulkJob.objects.exists()


# --------------------------------------------------------------------------- the budget


def test_a_budget_that_cannot_cover_the_whole_job_refuses_it_and_nothing_runs(team_a, alice, pipeline,
                                                                               django_capture_on_commit_callbacks):
    budget_save(team=team_a, hard_limit=Decimal("0.0000001"), period="month")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(BudgetExceeded):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", batch_size=2, user=alice)
    assert not BulkJob.objects.exists() and not BulkRow.objects.exists() and not Job.objects.exists()
    assert not UsageRecord.objects.exists() and not QueryRun.objects.exists()
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()


# --------------------------------------------------------------------------- end to end, the real model


def _start(team, user, pipeline, capture, **kwargs) -> BulkJob:
    with capture(execute=True):  # the job runs in-process once the upload commits
        bulk = bulk_job_start(team=team, pipeline=pipeline, data=CSV, filename="q.csv", user=user, **kwargs)
    bulk.refresh_from_db()
    return bulk


@pytest.mark.slow  # the real SmolLM2 answers three questions (and MiniLM checks them)
def test_a_job_of_three_questions_at_k_2_runs_to_the_end_with_exact_costs(
    team_a, alice, pipeline, local_model, django_capture_on_commit_callbacks
):
    budget_save(team=team_a, hard_limit=Decimal("100"), period="month")
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, batch_size=2)
    assert bulk.status == "succeeded", bulk.error or bulk.job.error
    assert (bulk.rows_total, bulk.rows_done, bulk.rows_failed) == (3, 3, 0)
    assert bulk.job.status == "succeeded" and bulk.job.progress_done == 3
    rows = list(bulk.rows.order_by("position"))
    assert all(row.status == "done" and row.answer and row.quality_label for row in rows)
    # The first two shared one prompt (or fell back), the third was alone.
    assert rows[2].batch_size == 1 and not rows[2].fallback
    batch_calls = UsageRecord.objects.filter(reservation=bulk.reservation, stage=Stage.GENERATE, query_run_id=None)
    assert batch_calls.count() == 1
    call = batch_calls.get()
    own = {row.pk: sum(r.cost for r in UsageRecord.objects.filter(query_run_id=row.query_run_id)) for row in rows}
    # Each row's cost: its own ledger rows plus its share of the batch call; the shares sum exactly to the call.
    assert sum(rows[n].cost - own[rows[n].pk] for n in (0, 1)) == call.cost
    assert rows[2].cost == own[rows[2].pk]
    ledger = sum(r.cost for r in UsageRecord.objects.filter(reservation=bulk.reservation))
    assert sum(row.cost for row in rows) == ledger == bulk.cost
    assert sum(row.prompt_tokens for row in rows[:2] if not row.fallback) <= call.prompt_tokens
    reservation = Reservation.objects.get(pk=bulk.reservation_id)
    assert reservation.status == "settled" and reservation.actual == ledger
    assert reservation.estimate <= bulk.estimate  # shrunk as rows settled
    window = BudgetWindow.objects.get()  # the shrinks and the settlement left the budget exact
    assert (window.reserved, window.spent) == (0, ledger)
    for row in rows:  # each row is a query run with its savings against naive RAG
        run = row.query_run
        assert run.status == "succeeded" and run.cost == row.cost and run.savings == run.baseline_cost - run.cost
    batched = [row for row in rows[:2] if not row.fallback]
    assert all(row.batch_size == 2 and row.tokens_saved > 0 for row in batched)
    content, _, _ = bulk_result_file(bulk=bulk, file_format="csv")
    assert content.splitlines()[0].startswith("id,question,gold,status,answer,citations,quality_label,cost")
    assert "q3" in content

    # Redelivered: finished rows are not redone, nothing more is billed.
    before = UsageRecord.objects.count()
    BulkJob.objects.filter(pk=bulk.pk).update(status="running")
    again = bulk_job_execute(bulk_job_id=bulk.pk)
    assert again.rows_done == 3 and UsageRecord.objects.count() == before and QueryRun.objects.count() == 3


@pytest.mark.slow
def test_a_redelivered_job_skips_the_rows_it_finished(team_a, alice, pipeline, local_model,
                                                      django_capture_on_commit_callbacks):
    from apps.core.services import job_fail

    calls = []

    def stop_after_first_batch(done, total=None, message=None):
        calls.append(done)
        if done >= 2:
            raise RuntimeError("worker lost")

    with django_capture_on_commit_callbacks(execute=False):
        bulk = bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", batch_size=2, user=alice)
    with pytest.raises(RuntimeError):
        bulk_job_execute(bulk_job_id=bulk.pk, progress=stop_after_first_batch)
    first = set(BulkRow.objects.filter(status="done").values_list("pk", flat=True))
    assert len(first) == 2
    billed = {pk: BulkRow.objects.get(pk=pk).cost for pk in first}
    bulk = bulk_job_execute(bulk_job_id=bulk.pk)
    assert bulk.status == "succeeded" and bulk.rows_done == 3
    assert {pk: BulkRow.objects.get(pk=pk).cost for pk in first} == billed
    assert QueryRun.objects.count() == 3  # none of the first two asked again
    job_fail(job_id=bulk.job_id, error="cleanup")
