"""Answer quality over the APIs: REST query fields and the ?quality= filter, /v1's parsimony.quality, pipelines'
abstain_below."""

from __future__ import annotations

import pytest

from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db(transaction=True)


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def test_the_runs_list_filters_by_quality_label(team_a, team_b, make_api_key, api_client):
    for label in ("grounded", "grounded", "unsupported", ""):
        QueryRun.objects.create(team=team_a, question=f"q-{label}", status="succeeded", quality_label=label)
    QueryRun.objects.create(team=team_b, question="theirs", status="succeeded", quality_label="grounded")
    client = _client(api_client, make_api_key(team_a, scopes=["read"]))

    grounded = client.get("/api/v1/queries?quality=grounded").json()
    assert [run["quality_label"] for run in grounded["results"]] == ["grounded", "grounded"]
    assert [run["question"] for run in client.get("/api/v1/queries?quality=none").json()["results"]] == ["q-"]
    assert len(client.get("/api/v1/queries").json()["results"]) == 4
    bad = client.get("/api/v1/queries?quality=great")
    assert bad.status_code == 400 and "grounded" in bad.json()["error"]["message"]


def test_v1_chat_completions_carry_the_quality_extension(team_a, make_api_key, api_client, echo_model,
                                                          empty_pipeline):
    client = _client(api_client, make_api_key(team_a))
    body = client.post("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "Hi"}]},
                       format="json").json()
    quality = body["parsimony"]["quality"]
    assert quality["label"] == "unsupported" and quality["citations_removed"] == 1 and quality["support"] == 0.0
    assert body["choices"][0]["message"]["content"] == "Paris is the capital"
    # A direct call to a model (no pipeline, nothing retrieved) is not assessed.
    direct = client.post("/v1/chat/completions",
                         {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]},
                         format="json").json()
    assert direct["parsimony"]["quality"]["label"] == ""


def test_pipelines_take_and_return_abstain_below(team_a, make_api_key, api_client, empty_pipeline):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    base = {"name": "careful", "model": "smollm2-135m-instruct", "retriever": "none"}
    bad = client.post("/api/v1/pipelines", {**base, "abstain_below": 2}, format="json")
    assert bad.status_code == 400 and "abstain_below" in str(bad.json()["error"])
    good = client.post("/api/v1/pipelines", {**base, "abstain_below": 0.1}, format="json")
    assert good.status_code == 201 and good.json()["abstain_below"] == 0.1
    assert client.get(f"/api/v1/pipelines/{empty_pipeline.pk}").json()["abstain_below"] is None
