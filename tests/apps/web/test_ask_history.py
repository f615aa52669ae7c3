"""Evaluation and bulk job rows are QueryRuns (metered, in the ledger and usage) but not questions anyone
asked: the Ask page's history, the home page's recent queries and the query list leave them out."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.bulk.services import _run_open, bulk_job_start
from apps.costs.models import UsageRecord
from apps.evaluations.services import eval_run_start
from apps.rag.models import QueryRun, QueryStatus
from tests.apps.evaluations.conftest import eval_set, make_pipeline, passages  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_runs(team_a, alice, eval_set, make_pipeline, passages, monkeypatch,  # noqa: F811
               django_capture_on_commit_callbacks):
    """One question asked on the Ask page, one evaluation row, one bulk job row (each with a ledger row)."""
    import workers.tasks.rag  # noqa: F401  (imported now, it binds the real query_run_execute, not the stand-in)
    from apps.rag import services as rag_services

    def answered(*, query_run_id, **_):
        QueryRun.objects.filter(pk=query_run_id).update(status=QueryStatus.SUCCEEDED, answer="1889")

    monkeypatch.setattr(rag_services, "query_run_execute", answered)
    pipeline = make_pipeline("facts")
    asked = QueryRun.objects.create(team=team_a, pipeline=pipeline, user=alice, question="Who asked this one?",
                                    status=QueryStatus.SUCCEEDED, answer="me")
    with django_capture_on_commit_callbacks(execute=True):
        eval_run_start(team=team_a, eval_set=eval_set, pipelines=[pipeline], user=alice)
    evaluated = QueryRun.objects.get(question="When was the Eiffel Tower completed?")
    with django_capture_on_commit_callbacks(execute=False):  # the job is not run: one row opened by hand
        bulk = bulk_job_start(team=team_a, pipeline=pipeline, data=b"id,question\nb1,Which bulk row is this?\n",
                              filename="q.csv", user=alice)
    bulked, _ = _run_open(bulk, bulk.rows.get())
    for run in (asked, evaluated, bulked):
        UsageRecord.objects.create(team=team_a, user=alice, stage="generate", model_name="m", pipeline_name="facts",
                                   query_run_id=run.pk, prompt_tokens=10, completion_tokens=2,
                                   cost=Decimal("0.0000010000"))
    return asked, evaluated, bulked


def test_job_rows_are_marked_with_their_origin(three_runs):
    asked, evaluated, bulked = three_runs
    assert (asked.origin, evaluated.origin, bulked.origin) == ("ask", "evaluation", "bulk")


def test_the_ask_page_and_home_show_only_asked_questions(owner_client, three_runs):
    ask = owner_client.get("/ask/").content.decode()
    assert "Who asked this one?" in ask
    assert "When was the Eiffel Tower completed?" not in ask and "Which bulk row is this?" not in ask
    home = owner_client.get("/").content.decode()
    assert "Who asked this one?" in home and "Eiffel Tower completed" not in home and "bulk row" not in home


def test_the_query_list_leaves_job_rows_out_unless_asked_and_usage_keeps_them(
    api_client, team_a, make_api_key, three_runs
):
    asked, evaluated, bulked = three_runs
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a, scopes=['read']).raw_key}")
    ids = lambda query="": [r["id"] for r in api_client.get(f"/api/v1/queries{query}").json()["results"]]  # noqa: E731
    assert ids() == [asked.pk] and ids("?origin=ask") == [asked.pk]
    evaluation_rows = list(QueryRun.objects.filter(origin="evaluation").values_list("pk", flat=True))
    assert evaluated.pk in evaluation_rows and len(evaluation_rows) == 2  # the set's two questions
    assert sorted(ids("?origin=evaluation")) == sorted(evaluation_rows) and ids("?origin=bulk") == [bulked.pk]
    assert sorted(ids("?origin=all")) == sorted([asked.pk, *evaluation_rows, bulked.pk])
    bad = api_client.get("/api/v1/queries?origin=robots")
    assert bad.status_code == 400 and "unknown origin 'robots'" in bad.json()["error"]["message"]
    assert api_client.get(f"/api/v1/queries/{evaluated.pk}").json()["origin"] == "evaluation"
    usage = api_client.get("/api/v1/usage?group_by=pipeline").json()
    assert Decimal(usage["total_cost"]) == Decimal("0.0000030000")  # the three ledger rows, job rows included

