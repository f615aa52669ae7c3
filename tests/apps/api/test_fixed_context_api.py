"""REST: a pipeline's fixed context and attention options, and the prefill operation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.models import Job
from apps.costs.models import ModelEndpoint, Reservation
from apps.costs.services import budget_save
from apps.rag.models import Pipeline
from apps.rag.services import pipeline_save

pytestmark = pytest.mark.django_db(transaction=True)

HANDBOOK = "Every employee receives 27 days of paid leave. Unused days expire in March. " * 20


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.fixture
def admin(team_a, make_api_key, api_client):
    return _client(api_client, make_api_key(team_a, scopes=["admin"]))


@pytest.fixture
def queued(monkeypatch):
    """Jobs stay queued (no worker runs them here): the sent job ids."""
    sent: list[int] = []
    monkeypatch.setattr("apps.core.dispatch.job_enqueue", lambda *, job, task: sent.append(job.pk))
    return sent


@pytest.fixture
def handbook(team_a):
    return pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct", fixed_context=HANDBOOK,
                         attention_backend="squeezed", attention_options={"keep_fraction": 0.2})


def _corpus(team, name="handbook"):
    from apps.corpora.services import corpus_create

    return corpus_create(team=team, name=name)


def test_it_creates_and_changes_a_pipeline_with_a_fixed_context_and_attention_options(team_a, admin):
    created = admin.post("/api/v1/pipelines", {
        "name": "handbook", "model": "smollm2-135m-instruct", "fixed_context": HANDBOOK,
        "attention_backend": "squeezed", "attention_options": {"keep_fraction": 0.2},
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["fixed_context"] == HANDBOOK and body["fixed_context_corpus"] is None and body["has_fixed_context"]
    assert body["attention_backend"] == "squeezed" and body["attention_options"] == {"keep_fraction": 0.2}
    corpus = _corpus(team_a)
    changed = admin.patch(f"/api/v1/pipelines/{body['id']}", {"fixed_context": "", "fixed_context_corpus": corpus.pk},
                          format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["fixed_context"] == "" and changed.json()["fixed_context_corpus"] == corpus.pk
    assert changed.json()["attention_options"] == {"keep_fraction": 0.2}  # untouched by a partial change
    # Without its fixed context and with no corpus, a pipeline must say it is retrieval-free.
    no_source = admin.patch(f"/api/v1/pipelines/{body['id']}", {"fixed_context_corpus": None}, format="json")
    assert no_source.status_code == 400 and no_source.json()["error"]["code"] == "corpus_required"
    cleared = admin.patch(f"/api/v1/pipelines/{body['id']}", {"fixed_context_corpus": None, "attention_backend": "full",
                                                              "attention_options": {}, "retriever": "none"},
                          format="json")
    assert cleared.status_code == 200 and not cleared.json()["has_fixed_context"]
    pipeline = Pipeline.objects.get(pk=body["id"])
    assert pipeline.fixed_context_corpus is None and pipeline.attention_options == {}
    assert admin.get(f"/api/v1/pipelines/{body['id']}").json()["attention_backend"] == "full"


def test_it_rejects_attention_options_the_backend_does_not_have_naming_the_field(admin):
    unknown = admin.post("/api/v1/pipelines", {"name": "p", "model": "smollm2-135m-instruct",
                                               "attention_backend": "squeezed", "attention_options": {"top_k": 8}},
                         format="json")
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert "unknown options for attention backend 'squeezed': top_k" in error["message"]
    assert "attention_options" in error["detail"]["fields"]
    not_an_object = admin.post("/api/v1/pipelines", {"name": "p", "model": "smollm2-135m-instruct",
                                                     "attention_options": [1, 2]}, format="json")
    assert not_an_object.status_code == 400
    assert (
        not_an_object.json()["error"]["detail"]["fields"]["attention_options"]
        == "attention options must be an object"
    )
    assert not Pipeline.objects.exists()


def test_it_refuses_another_teams_corpus_as_the_fixed_context(team_b, admin, handbook):
    theirs = _corpus(team_b, "theirs")
    created = admin.post("/api/v1/pipelines", {"name": "steal", "model": "smollm2-135m-instruct",
                                               "fixed_context_corpus": theirs.pk}, format="json")
    assert created.status_code == 400
    assert created.json()["error"]["detail"]["fields"] == {"fixed_context_corpus": "not found"}
    changed = admin.patch(f"/api/v1/pipelines/{handbook.pk}", {"fixed_context_corpus": theirs.pk}, format="json")
    assert changed.status_code == 400
    handbook.refresh_from_db()
    assert handbook.fixed_context_corpus is None and not Pipeline.objects.filter(name="steal").exists()


def test_the_prefill_operation_starts_the_job_and_answers_202_with_where_to_poll(admin, handbook, queued):
    response = admin.post(f"/api/v1/pipelines/{handbook.pk}/fixed-context/prefill",
                          {"backends": ["squeezed", "retrieval"]}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    job = Job.objects.get(pk=body["id"])
    assert queued == [job.pk]
    assert (body["kind"], body["status"], body["progress_percent"]) == ("attention.prefill", "queued", 0)
    assert job.queue == "gpu" and job.progress_total == 1000
    assert job.params["pipeline_id"] == handbook.pk and job.params["backends"] == ["squeezed", "retrieval"]
    assert body["url"] == f"http://testserver/api/v1/jobs/{job.pk}" == response["Location"]
    assert admin.get(body["url"]).json()["status"] == "queued"
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == "held"  # the worst case is held
    assert admin.post(f"/api/v1/pipelines/{handbook.pk}/fixed-context/prefill").status_code == 202  # body optional


def test_the_prefill_operation_says_why_it_cannot_run(team_a, admin, handbook, queued):
    plain = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", retriever="none")
    remote = ModelEndpoint.objects.create(team=team_a, name="remote-gpt", kind="openai", base_url="http://remote.invalid/v1",
                                          price_name="local/smollm2-135m-instruct")
    elsewhere = pipeline_save(team=team_a, name="elsewhere", model_endpoint=remote, fixed_context=HANDBOOK)
    cases = [
        (plain, {}, "no_fixed_context", "pipeline 'plain' has no fixed context to prefill"),
        (elsewhere, {}, "remote_endpoint", "prefilled with a local model"),
        (handbook, {"backends": ["sparse"]}, "unknown_backend", "unknown attention backends ['sparse'] (valid: full, "
                                                                 "retrieval, squeezed)"),
    ]
    for pipeline, body, code, message in cases:
        response = admin.post(f"/api/v1/pipelines/{pipeline.pk}/fixed-context/prefill", body, format="json")
        assert response.status_code == 400, (code, response.json())
        assert response.json()["error"]["code"] == code and message in response.json()["error"]["message"]
    assert not Job.objects.exists() and not Reservation.objects.exists() and queued == []


def test_an_over_budget_team_gets_402_and_no_job(team_a, admin, handbook, queued):
    budget_save(team=team_a, hard_limit=Decimal("0.0000001"), period="day")
    response = admin.post(f"/api/v1/pipelines/{handbook.pk}/fixed-context/prefill", format="json")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert "the day budget of team 'Team A' would be exceeded" in response.json()["error"]["message"]
    assert not Job.objects.exists() and queued == []


def test_prefilling_needs_the_admin_scope_and_another_team_gets_404(
    team_a, team_b, make_api_key, api_client, handbook, queued
):
    path = f"/api/v1/pipelines/{handbook.pk}/fixed-context/prefill"
    member = _client(api_client, make_api_key(team_a, scopes=["read", "query", "ingest"]))
    denied = member.post(path, format="json")
    assert denied.status_code == 403 and "needs the 'admin' scope" in denied.json()["error"]["message"]
    other = _client(api_client, make_api_key(team_b, scopes=["admin"]))
    assert other.post(path, format="json").status_code == 404
    assert not Job.objects.exists()


def test_the_schema_documents_the_fields_and_the_prefill_operation(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/pipelines/{pipeline_id}/fixed-context/prefill"]["post"]
    assert "202" in operation["responses"]
    fields = schema["components"]["schemas"]["PipelineInput"]["properties"]
    assert {"fixed_context", "fixed_context_corpus", "attention_options"} <= set(fields)
    assert {"fixed_context", "fixed_context_corpus", "attention_options"} <= set(
        schema["components"]["schemas"]["PipelineOutput"]["properties"])
    assert "url" in schema["components"]["schemas"]["PrefillJobOutput"]["properties"]


def test_it_reads_and_writes_a_pipelines_prompting_options(admin):
    created = admin.post("/api/v1/pipelines", {
        "name": "sp", "model": "smollm2-135m-instruct", "prompting_strategy": "superposition",
        "prompting_options": {"top_k": 1, "answer_mode": "recompute"}, "retriever": "none",
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["prompting_options"] == {"top_k": 1, "answer_mode": "recompute"}
    refused = admin.patch(f"/api/v1/pipelines/{body['id']}", {"prompting_options": {"keep": 2}}, format="json")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "unknown options for prompting strategy 'superposition': keep" in error["message"]
    assert "prompting_options" in error["detail"]["fields"]
    assert admin.get(f"/api/v1/pipelines/{body['id']}").json()["prompting_options"] == {
        "top_k": 1,
        "answer_mode": "recompute",
    }
