"""REST: upload a file of questions, follow the job, download its results; bad input and budgets refused."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.bulk.models import BulkJob
from apps.costs import metering
from apps.costs.services import budget_save
from apps.rag.services import pipeline_save
from tests.apps.rag.conftest import fake_search_hits
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db

CSV = b"id,question\nq1,When was the Eiffel Tower completed?\nq2,What is the capital of France?\nq3,Where is it?\n"
PASSAGES = [("Eiffel Tower", "The Eiffel Tower in Paris was completed in 1889."),
            ("Paris", "Paris is the capital of France.")]


@pytest.fixture
def pipeline(team_a, monkeypatch, settings, tmp_path):
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    fake_search_hits(monkeypatch, PASSAGES)
    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         max_output_tokens=12, top_k=2)


@pytest.fixture
def api(team_a, alice, make_api_key, api_client):
    key = make_api_key(team_a, scopes=["read", "query"], user=alice)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def _upload(api, data: bytes, name: str = "questions.csv", **fields):
    return api.post("/api/v1/bulk-jobs", {"file": SimpleUploadedFile(name, data), "pipeline": "facts", **fields},
                    format="multipart")


@pytest.mark.slow  # MiniLM checks each answer's support
def test_an_upload_runs_as_one_job_and_its_results_download_as_csv_and_jsonl(
    api, pipeline, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(metering, "_target_override",
                        lambda endpoint: EchoTarget(name=endpoint.name, reply="A1: 1889 [1]\nA2: Paris [2]"))
    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(api, CSV, batch_size=2)
    assert response.status_code == 202, response.content
    bulk_id = response.json()["id"]
    body = api.get(f"/api/v1/bulk-jobs/{bulk_id}").json()
    assert body["status"] == "succeeded" and body["rows_done"] == 3 and body["batch_size"] == 2
    assert body["progress"] == {"done": 3, "total": 3, "message": "done"}
    assert Decimal(body["cost"]) > 0 and Decimal(body["estimate"]) >= Decimal(body["cost"])

    download = api.get(f"/api/v1/bulk-jobs/{bulk_id}/results")
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert f'filename="bulk-{bulk_id}-results.csv"' in download["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0]["answer"] == "1889 [1]" and rows[1]["answer"] == "Paris [2]"
    assert json.loads(rows[0]["citations"])[0]["document_title"] == "Eiffel Tower"
    assert rows[0]["quality_label"] and rows[0]["batch_size"] == "2"
    assert sum(Decimal(r["cost"]) for r in rows) == Decimal(body["cost"])

    lines = api.get(f"/api/v1/bulk-jobs/{bulk_id}/results", {"type": "jsonl"}).content.decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == ["q1", "q2", "q3"] and records[1]["answer"] == "Paris [2]"
    assert all({"tokens_saved", "prompt_tokens", "completion_tokens", "cost"} <= set(r) for r in records)


def test_a_corrupt_file_is_a_400_and_nothing_is_stored(api, pipeline):
    response = _upload(api, b"id,text\n1,hi\n")
    assert response.status_code == 400
    assert "no 'question' column" in response.json()["error"]["message"]
    assert not BulkJob.objects.exists()


def test_a_job_the_budget_cannot_cover_is_a_402_and_nothing_runs(api, team_a, pipeline):
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    response = _upload(api, CSV)
    assert response.status_code == 402, response.content
    assert not BulkJob.objects.exists()


def test_another_teams_job_is_not_found(api, pipeline, team_b, make_api_key, api_client):
    with pytest.MonkeyPatch.context():
        response = _upload(api, CSV)
    assert response.status_code == 202
    other = make_api_key(team_b, scopes=["read", "query"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {other.raw_key}")
    bulk_id = response.json()["id"]
    assert api_client.get(f"/api/v1/bulk-jobs/{bulk_id}").status_code == 404
    assert api_client.get(f"/api/v1/bulk-jobs/{bulk_id}/results").status_code == 404
    assert api_client.get("/api/v1/bulk-jobs").json()["results"] == []


def test_an_unknown_result_format_is_a_400(api, pipeline):
    bulk_id = _upload(api, CSV).json()["id"]
    assert api.get(f"/api/v1/bulk-jobs/{bulk_id}/results", {"type": "xml"}).status_code == 400


def test_a_query_only_key_sees_only_the_bulk_jobs_it_started(api, team_a, pipeline, make_api_key, api_client):
    bulk_id = _upload(api, CSV).json()["id"]  # started by the read+query key
    own_key = make_api_key(team_a, scopes=["query"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {own_key.raw_key}")
    assert api_client.get(f"/api/v1/bulk-jobs/{bulk_id}").status_code == 404
    assert api_client.get("/api/v1/bulk-jobs").json()["results"] == []
    own = _upload(api_client, CSV).json()["id"]
    assert [job["id"] for job in api_client.get("/api/v1/bulk-jobs").json()["results"]] == [own]
