"""REST: the cache field, the X-Parsimony-Cache header, the per-request opt-out, the pipeline option."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the capital of France?"


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def test_a_repeated_question_says_it_came_from_the_cache(team_a, make_api_key, api_client, geo):
    client = _client(api_client, make_api_key(team_a))
    first = client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    assert first.status_code == 200 and first["X-Parsimony-Cache"] == "miss"
    assert first.json()["cache"]["status"] == "miss"
    again = client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    assert again.status_code == 200 and again["X-Parsimony-Cache"] == "hit"
    body = again.json()
    assert body["cache"] == {"status": "hit", "kind": "exact", "similarity": 1.0, "saved": first.json()["cost"],
                             "source_query_run_id": first.json()["id"]}
    assert body["answer"] == first.json()["answer"] and body["job_id"] is None and body["stages"] == []
    # Read back later, the run still says where its answer came from.
    assert client.get(f"/api/v1/queries/{body['id']}").json()["cache"]["status"] == "hit"


def test_a_request_can_bypass_the_cache(team_a, make_api_key, api_client, geo):
    client = _client(api_client, make_api_key(team_a))
    client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    bypass = client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION, "cache": False}, format="json")
    assert bypass.status_code == 200 and bypass["X-Parsimony-Cache"] == "bypass"
    assert bypass.json()["cache"]["status"] == "bypass" and bypass.json()["job_id"] is not None


def test_the_pipeline_option_is_read_and_written(team_a, make_api_key, api_client, geo):
    client = _client(api_client, make_api_key(team_a, scopes=["admin", "query"]))
    _corpus, pipeline, _ = geo
    assert client.get(f"/api/v1/pipelines/{pipeline.pk}").json()["answer_cache"] is True
    changed = client.patch(f"/api/v1/pipelines/{pipeline.pk}", {"answer_cache": False}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["answer_cache"] is False
    client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    again = client.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    assert again["X-Parsimony-Cache"] == "bypass"


def test_the_usage_page_shows_the_cache_metrics(team_a, alice, make_api_key, api_client, geo, client):
    api = _client(api_client, make_api_key(team_a))
    for _ in range(2):
        api.post("/api/v1/queries", {"pipeline": "geo", "question": QUESTION}, format="json")
    client.force_login(alice)
    page = client.get("/usage/").content.decode()
    assert 'id="answer-cache-metrics"' in page
    assert "<dt>Hits</dt><dd>1 (1 exact, 0 same-intent)</dd>" in page
    assert "<dt>Misses</dt><dd>1</dd>" in page
