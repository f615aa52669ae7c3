"""First run: bootstrap_demo's pipelines answer on the Ask page; a pipeline needs a corpus unless it is
retrieval-free; the run status says what is happening (a cold model load, no compressing without compression)."""

from __future__ import annotations

import io

import pytest

from apps.rag.models import Pipeline, QueryRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def docs_corpus(team_a, alice):
    from apps.corpora.services import corpus_create

    return corpus_create(team=team_a, name="Parsimony docs", user=alice)


def test_bootstrap_creates_a_default_and_a_cost_saving_pipeline_that_ask_answers_with(
    team_a, alice, docs_corpus, default_models_db, member_client, echo_model, django_capture_on_commit_callbacks
):
    from apps.core.seeders import SEEDERS, seed_demo_pipelines

    assert SEEDERS.index(seed_demo_pipelines) > 0  # after the docs corpus is seeded
    out = io.StringIO()
    seed_demo_pipelines(team=team_a, user=alice, stdout=out)
    default, cascade, saving, quote = Pipeline.objects.filter(team=team_a).order_by("name")
    assert (default.name, default.compression_method) == ("parsimony-docs", "none")
    assert (saving.name, saving.compression_method, saving.compression_target) == (
        "parsimony-docs-extractive", "extractive", 0.5)
    assert (quote.name, quote.prompting_strategy) == ("parsimony-docs-quote", "extractive_answer")
    assert cascade.name == "parsimony-docs-cascade" and cascade.cascade["tiers"] == [quote.pk, default.pk]
    assert all(list(p.corpora.all()) == [docs_corpus] for p in (default, saving, quote))
    page = member_client.get("/ask/").content.decode()
    assert f'<option value="{default.pk}" selected>' in page  # the default is preselected
    for pipeline in (default, saving, quote, cascade):
        with django_capture_on_commit_callbacks(execute=True):
            response = member_client.post("/ask/", {"pipeline": pipeline.pk, "question": "How are budgets enforced?"})
        assert response.status_code == 302
    runs = {run.pipeline_id: run for run in QueryRun.objects.filter(origin="ask")}
    assert {pk: run.status for pk, run in runs.items()} == {
        p.pk: "succeeded" for p in (default, saving, quote, cascade)}
    assert runs[cascade.pk].cascade["tiers_run"] >= 1  # it answered through its tiers
    # Idempotent: a second bootstrap leaves them (and any tuning) alone.
    Pipeline.objects.filter(pk=default.pk).update(top_k=3)
    seed_demo_pipelines(team=team_a, user=alice, stdout=out)
    assert Pipeline.objects.filter(team=team_a).count() == 4 and Pipeline.objects.get(pk=default.pk).top_k == 3


def test_bootstrap_creates_no_pipeline_without_the_docs_corpus(team_a, alice, default_models_db):
    from apps.core.seeders import seed_demo_pipelines

    out = io.StringIO()
    seed_demo_pipelines(team=team_a, user=alice, stdout=out)
    assert not Pipeline.objects.exists() and "none created" in out.getvalue()


def _form_values(**overrides):
    values = {
        "name": "cheap-qa", "description": "", "model_endpoint": "smollm2-135m-instruct",
        "retriever": "hybrid", "top_k": 3, "compression_method": "none", "compression_target": 1.0,
        "prompting_strategy": "naive", "attention_backend": "full", "max_output_tokens": 64, "system_prompt": "",
    }
    return {**values, **overrides}


def test_the_form_refuses_a_pipeline_without_a_corpus_and_accepts_a_retrieval_free_one(
    member_client, corpus, default_models_db
):
    page = member_client.post("/pipelines/new/", _form_values())
    assert page.status_code == 400
    assert "at least one corpus is required" in page.content.decode()
    assert not Pipeline.objects.exists()
    mixed = member_client.post("/pipelines/new/", _form_values(retriever="none", corpora=[corpus.pk]))
    assert mixed.status_code == 400 and "must be empty" in mixed.content.decode()
    assert member_client.post("/pipelines/new/", _form_values(retriever="none")).status_code == 302
    bad = member_client.post("/pipelines/new/", _form_values(name="other", corpora=[corpus.pk],
                                                             decoding_options='{"no_repeat_ngram_size": 99}'))
    assert bad.status_code == 400 and "no_repeat_ngram_size must be an integer" in bad.content.decode()


def test_a_retrieval_free_pipeline_answers_without_retrieving(team_a, default_models_db, echo_model):
    from apps.rag.services import pipeline_save, query_run_execute, query_run_start

    pipeline = pipeline_save(team=team_a, name="closed-book", model_endpoint="smollm2-135m-instruct",
                             retriever="none")
    run = query_run_start(team=team_a, pipeline=pipeline, question="What is 2 + 2?")
    run = query_run_execute(query_run_id=run.pk)
    assert run.status == "succeeded" and run.citations == []
    assert set(run.team.usage_records.filter(query_run_id=run.pk).values_list("stage", flat=True)) == {"generate"}


@pytest.mark.parametrize("method, compressing", [("none", False), ("extractive", True)])
def test_the_run_status_says_loading_the_model_on_a_cold_start_and_compressing_only_when_it_does(
    team_a, corpus, default_models_db, echo_model, monkeypatch, method, compressing
):
    from apps.rag import question_runner
    from apps.rag.services import pipeline_save, query_run_execute, query_run_start

    monkeypatch.setattr(question_runner, "endpoint_loaded", lambda endpoint: False)  # a cold worker
    pipeline = pipeline_save(team=team_a, name="qa", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             compression_method=method)
    messages: list[str] = []
    run = query_run_start(team=team_a, pipeline=pipeline, question="What do zebras look like?")
    query_run_execute(query_run_id=run.pk, progress=lambda done, total, message: messages.append(message))
    assert any(m.startswith("loading the model smollm2-135m-instruct") for m in messages), messages
    assert ("compressing" in messages) is compressing
    assert messages.index("retrieving") < messages.index(next(m for m in messages if m.startswith("loading")))
    assert messages[-1] == "done"


def test_the_run_page_says_a_loop_was_stopped_and_what_it_saved(
    member_client, pipeline, echo_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        member_client.post("/ask/", {"pipeline": pipeline.pk, "question": "Loop?"})
    run = QueryRun.objects.get()
    QueryRun.objects.filter(pk=run.pk).update(finish_reason="repetition", repetition_tokens_saved=83)
    page = member_client.get(f"/ask/runs/{run.pk}/").content.decode()
    assert "The model started repeating itself" in page and "83 output tokens" in page
