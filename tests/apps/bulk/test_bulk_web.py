"""The Bulk page: upload a file of questions, bad input and budgets refused on the page, results downloaded."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.bulk.models import BulkJob
from apps.costs.services import budget_save
from apps.rag.services import pipeline_save

pytestmark = pytest.mark.django_db

CSV = b"id,question\nq1,When was the Eiffel Tower completed?\nq2,What is the capital of France?\n"


@pytest.fixture
def pipeline(team_a, settings, tmp_path):
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         max_output_tokens=12)


@pytest.fixture
def web(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _post(web, pipeline, data: bytes, **fields):
    return web.post("/bulk/new/", {"pipeline": pipeline.pk, "batch_size": 2, "file": SimpleUploadedFile("q.csv", data),
                                   **fields})


def test_the_page_offers_the_upload_and_a_job_is_queued_then_shown(web, pipeline):
    page = web.get("/bulk/")
    assert page.status_code == 200 and b"Run a file of questions" in page.content and b"facts" in page.content
    response = _post(web, pipeline, CSV)  # queued: the job runs once this request's transaction commits
    bulk = BulkJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/bulk/{bulk.pk}/"
    assert bulk.rows_total == 2 and bulk.batch_size == 2 and bulk.reservation.status == "held"
    detail = web.get(f"/bulk/{bulk.pk}/")
    assert detail.status_code == 200 and b"When was the Eiffel Tower completed?" in detail.content
    download = web.get(f"/bulk/{bulk.pk}/results.csv")
    assert download.status_code == 200 and download.content.decode().splitlines()[1].startswith("q1,")
    assert web.get(f"/bulk/{bulk.pk}/results.jsonl")["Content-Type"].startswith("application/x-ndjson")


def test_a_bad_file_is_refused_on_the_page_and_nothing_is_stored(web, pipeline):
    response = _post(web, pipeline, b"name\nx\n")
    assert response.status_code == 400 and b"no &#x27;question&#x27; column" in response.content
    assert not BulkJob.objects.exists()


def test_a_budget_too_small_refuses_the_job_on_the_page(web, team_a, pipeline):
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    response = _post(web, pipeline, CSV)
    assert response.status_code == 402 and b"budget" in response.content.lower()
    assert not BulkJob.objects.exists()


def test_another_teams_job_is_not_found(web, pipeline, team_b, make_user):
    from apps.accounts.models import Role
    from apps.accounts.services import membership_set

    _post(web, pipeline, CSV)
    bulk = BulkJob.objects.get()
    stranger = make_user("stranger")
    membership_set(team=team_b, user=stranger, role=Role.OWNER)
    other = Client()
    other.force_login(stranger)
    assert other.get(f"/bulk/{bulk.pk}/").status_code == 404
    assert other.get(f"/bulk/{bulk.pk}/results.csv").status_code == 404
