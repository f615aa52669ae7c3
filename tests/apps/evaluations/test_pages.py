"""The evaluation pages and REST endpoints: the result page with its chart and frontier, downloads, upload
errors, a refused run; the Ask › Compare page with two answers and two cost panels."""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from apps.costs import metering
from apps.costs.models import Reservation, ReservationStatus
from apps.costs.services import budget_save
from apps.evaluations.models import EvalRow, EvalRun, EvalSet
from apps.rag.models import QueryRun
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db

# (pipeline, [(contained, cost, latency_ms)] per question)
RESULTS = {
    "cheap": [(1.0, "0.0001", 100), (0.0, "0.0001", 300)],  # 50% at $0.0001: on the frontier
    "pricey": [(1.0, "0.0010", 900), (1.0, "0.0010", 1100)],  # 100% at $0.001: on the frontier
    "worse": [(0.0, "0.0020", 50), (1.0, "0.0020", 70)],  # 50% at $0.002: dominated
}


@pytest.fixture
def web(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def finished_run(team_a, eval_set):
    run = EvalRun.objects.create(team=team_a, eval_set=eval_set, pipeline_names=list(RESULTS), status="succeeded",
                                 estimate=Decimal("0.05"), cost=Decimal("0.0062"), finished_at=timezone.now())
    for name, rows in RESULTS.items():
        for n, (hit, cost, latency) in enumerate(rows):
            item = eval_set.items[n]
            EvalRow.objects.create(
                run=run, pipeline_name=name, item_id=item["id"], position=n, question=item["question"],
                gold=item["answers"], answer=f"answer {n}", status="succeeded", contained=hit, f1=hit / 2,
                exact_match=0.0, cost=Decimal(cost), latency_ms=latency, quality_label="grounded",
                quality={"support": 1.0}, finished_at=timezone.now(),
            )
    return run


def test_the_result_page_shows_accuracy_cost_of_pass_latency_and_the_chart_with_its_frontier(web, finished_run):
    page = web.get(f"/evaluations/{finished_run.pk}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert '<svg id="eval-chart"' in body and "<script" not in body.split('id="eval-chart"')[1].split("</svg>")[0]
    frontier = set(re.findall(r'<g class="point frontier-point" data-pipeline="([^"]+)"', body))
    assert frontier == {"cheap", "pricey"}
    assert re.findall(r'<g class="point" data-pipeline="([^"]+)"', body) == ["worse"]
    assert 'class="frontier" points="' in body
    row = body.split('<tr data-pipeline="cheap">')[1].split("</tr>")[0]
    assert "50%" in row and "on the frontier" in row
    # cost-of-pass: $0.0002 spent for one right answer; p50 latency of 100 and 300 ms is 200 ms.
    assert "$0.0002" in row and "0.2" in row
    assert "on the frontier" not in body.split('<tr data-pipeline="worse">')[1].split("</tr>")[0]


def test_the_downloads_hold_every_row(web, api_client, make_api_key, team_a, finished_run):
    csv_text = web.get(f"/evaluations/{finished_run.pk}/rows.csv").content.decode()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == 6 and rows[0]["pipeline"] == "cheap" and rows[0]["cost"] == "0.0001000000"
    data = json.loads(web.get(f"/evaluations/{finished_run.pk}/rows.json").content)
    assert len(data["rows"]) == 6 and data["rows"][0]["gold"] == ["1889"]
    key = make_api_key(team_a, scopes=["read"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    detail = api_client.get(f"/api/v1/evaluations/{finished_run.pk}").json()
    by_name = {r["pipeline"]: r for r in detail["results"]}
    assert by_name["cheap"]["cost_of_pass"] == "0.0002000000" and by_name["cheap"]["p50_latency_ms"] == 200
    assert [n for n, r in by_name.items() if r["frontier"]] == ["cheap", "pricey"]
    downloaded = api_client.get(f"/api/v1/evaluations/{finished_run.pk}/rows", {"download": "csv"})
    assert downloaded.status_code == 200 and downloaded["Content-Type"].startswith("text/csv")
    assert api_client.get(f"/api/v1/evaluations/{finished_run.pk}/rows", {"download": "xls"}).status_code == 400


def test_a_corrupt_upload_is_refused_on_the_page_and_through_the_api(web, api_client, make_api_key, team_a):
    bad = SimpleUploadedFile("set.jsonl", b'{"question": "Who?", "answers": ["A"]}\n{not json', "application/json")
    page = web.post("/evaluations/", {"action": "upload", "name": "bad", "file": bad})
    assert page.status_code == 400 and "line 2: not a json object" in page.content.decode().lower()
    key = make_api_key(team_a, scopes=["query"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    bad.seek(0)
    response = api_client.post("/api/v1/eval-sets", {"file": bad}, format="multipart")
    assert response.status_code == 400 and "line 2" in response.json()["error"]["message"]
    assert not EvalSet.objects.exists()
    shipped = api_client.post("/api/v1/eval-sets", {"shipped": "parsimony-docs"}, format="json")
    assert shipped.status_code == 201 and shipped.json()["size"] == 12


def test_a_run_the_budget_cannot_cover_is_refused_on_the_page_and_nothing_runs(web, team_a, eval_set, make_pipeline):
    pipeline = make_pipeline("one")
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    page = web.post("/evaluations/", {"action": "run", "eval_set": eval_set.pk, "pipelines": [pipeline.pk]})
    assert page.status_code == 402 and "Not started: a budget would be exceeded" in page.content.decode()
    assert not EvalRun.objects.exists() and not QueryRun.objects.exists()
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()


@pytest.mark.slow  # the quality check loads MiniLM
def test_compare_shows_two_answers_with_two_cost_panels(
    web, make_pipeline, passages, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(metering, "_target_override", lambda e: EchoTarget(name=e.name, reply=f"{e.name} says 1889"))
    first, second = make_pipeline("first"), make_pipeline("second", top_k=1)
    assert 'href="/ask/compare/"' in web.get("/ask/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = web.post("/ask/compare/", {"first": first.pk, "second": second.pk,
                                              "question": "When was the Eiffel Tower completed?"})
    assert response.status_code == 302
    page = web.get(response["Location"])
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count('class="card cost-panel"') == 2 and body.count('class="card answer-card"') == 2
    assert '<div class="compare-column" data-pipeline="first">' in body
    assert '<div class="compare-column" data-pipeline="second">' in body
    assert QueryRun.objects.filter(status="succeeded").count() == 2
    assert body.count("says 1889") >= 2


def test_compare_refuses_the_same_pipeline_twice(web, make_pipeline):
    one = make_pipeline("one")
    make_pipeline("two")
    response = web.post("/ask/compare/", {"first": one.pk, "second": one.pk, "question": "Why?"})
    assert response.status_code == 400 and "choose two different pipelines" in response.content.decode()
    assert not QueryRun.objects.exists()
