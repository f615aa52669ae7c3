"""Answer quality in the browser: the badge on the answer and in the history, the usage page's filter and
breakdown, the ledger CSV's column, the admin ledger's filter, the pipeline form's abstain_below."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from apps.costs.models import UsageRecord
from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled(team_a, alice, default_models_db):
    """Two answered questions, one grounded and one unsupported, each with its ledger row; an upload's row."""
    runs = {}
    for label, cost in (("grounded", "0.25"), ("unsupported", "0.50")):
        run = QueryRun.objects.create(
            team=team_a, user=alice, question=f"a {label} question", status="succeeded", answer="An answer.",
            quality_label=label, support=1.0 if label == "grounded" else 0.0, cost=Decimal(cost),
            citations_removed=2 if label == "unsupported" else 0,
            citations=[{"n": 1, "chunk_id": 1, "document_id": 1, "document_title": "Doc", "start": 0, "end": 4,
                        "snippet": "text", "cited": False}],
        )
        UsageRecord.objects.create(team=team_a, user=alice, stage="generate", model_name="local/smollm2-135m",
                                   query_run_id=run.pk, prompt_tokens=10, completion_tokens=5, cost=Decimal(cost))
        runs[label] = run
    UsageRecord.objects.create(team=team_a, user=alice, stage="embed", model_name="local/all-minilm-l6-v2",
                               prompt_tokens=100, cost=Decimal("0.01"))
    return runs


def test_the_answer_and_the_history_show_the_label(member_client, labelled):
    page = member_client.get(f"/ask/runs/{labelled['unsupported'].pk}/").content.decode()
    assert 'class="status quality-unsupported"' in page
    assert "check it against the sources" in page
    assert "2 citation markers pointing past the 1 sources were removed" in page
    grounded = member_client.get(f"/ask/runs/{labelled['grounded'].pk}/").content.decode()
    assert 'class="status quality-grounded"' in grounded and "check it against" not in grounded
    history = member_client.get("/ask/").content.decode()
    assert 'quality-grounded' in history and 'quality-unsupported' in history


def test_the_usage_page_filters_and_breaks_down_by_quality(member_client, labelled):
    everything = member_client.get("/usage/").content.decode()
    assert "By answer quality" in everything and "$0.76" in everything
    only = member_client.get("/usage/?quality=unsupported").content.decode()
    assert '<option value="unsupported" selected>' in only
    assert "$0.50" in only and "$0.76" not in only.split("Spend per day")[0]


def test_the_ledger_csv_carries_the_label_and_follows_the_filter(member_client, labelled):
    def rows(url: str) -> list[dict]:
        response = member_client.get(url)
        return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))

    every = rows("/usage/ledger.csv?days=all")
    assert sorted(row["quality_label"] for row in every) == ["", "grounded", "unsupported"]
    grounded = rows("/usage/ledger.csv?days=all&quality=grounded")
    assert [(row["quality_label"], row["cost"]) for row in grounded] == [("grounded", "0.2500000000")]
    assert [row["stage"] for row in rows("/usage/ledger.csv?days=all&quality=none")] == ["embed"]


def test_the_admin_ledger_filters_by_answer_quality(client, make_user, labelled):
    client.force_login(make_user("root", is_superuser=True))
    page = client.get("/admin/costs/usagerecord/").content.decode()
    assert "answer quality" in page.lower()
    filtered = client.get("/admin/costs/usagerecord/?quality=unsupported").content.decode()
    assert "1 usage record" in filtered
    exported = client.get("/admin/costs/usagerecord/?export=csv&quality=grounded")
    rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert [row["quality_label"] for row in rows] == ["grounded"]


def test_the_pipeline_form_sets_abstain_below(member_client, pipeline):
    page = member_client.get(f"/pipelines/{pipeline.pk}/edit/")
    assert page.status_code == 200 and 'name="abstain_below"' in page.content.decode()
