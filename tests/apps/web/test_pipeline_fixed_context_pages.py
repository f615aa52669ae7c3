"""Pipelines in the browser: the fixed context, its corpus and attention options; the prefill button."""

from __future__ import annotations

import re

import pytest

from apps.core.models import Job
from apps.rag.models import Pipeline
from apps.rag.services import pipeline_save

pytestmark = pytest.mark.django_db

HANDBOOK = "Every employee receives 27 days of paid leave.\nUnused days expire in March.\n"


def _values(corpus, **overrides):
    values = {
        "name": "handbook", "description": "", "model_endpoint": "smollm2-135m-instruct", "corpora": [],
        "retriever": "hybrid", "top_k": 3, "compression_method": "none", "compression_target": 1.0,
        "prompting_strategy": "naive", "attention_backend": "squeezed", "max_output_tokens": 64, "system_prompt": "",
        "fixed_context": HANDBOOK, "fixed_context_corpus": "", "attention_options": '{"keep_fraction": 0.2}',
    }
    return {**values, **overrides}


@pytest.fixture
def handbook(team_a, default_models_db):
    return pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct", fixed_context=HANDBOOK)


def test_it_saves_the_fixed_context_its_corpus_and_attention_options_and_shows_them_again(
    member_client, corpus, team_a, default_models_db
):
    assert member_client.post("/pipelines/new/", _values(corpus)).status_code == 302
    pipeline = Pipeline.objects.get(team=team_a, name="handbook")
    assert pipeline.fixed_context == HANDBOOK and pipeline.attention_options == {"keep_fraction": 0.2}
    edit = member_client.get(f"/pipelines/{pipeline.pk}/edit/").content.decode()
    assert "Every employee receives 27 days of paid leave." in edit
    assert "{&quot;keep_fraction&quot;: 0.2}" in edit
    assert '<label for="id_fixed_context_corpus">' in edit and f'<option value="{corpus.pk}">Handbook</option>' in edit
    changed = _values(corpus, fixed_context="", fixed_context_corpus=str(corpus.pk), attention_options="")
    assert member_client.post(f"/pipelines/{pipeline.pk}/edit/", changed).status_code == 302
    pipeline.refresh_from_db()
    assert pipeline.fixed_context == "" and pipeline.fixed_context_corpus == corpus and pipeline.attention_options == {}
    edit = member_client.get(f"/pipelines/{pipeline.pk}/edit/").content.decode()
    assert f'<option value="{corpus.pk}" selected>Handbook</option>' in edit


def test_attention_option_errors_are_shown_by_the_field(member_client, corpus, default_models_db):
    for options, message in [
        ('{"keep_fraction": ', "Not valid JSON"),
        ("[0.1]", "Attention options must be a JSON object"),
        ('{"top_k": 8}', "unknown options for attention backend &#x27;squeezed&#x27;: top_k"),
        ('{"keep_fraction": 2}', "keep_fraction must be in"),
    ]:
        page = member_client.post("/pipelines/new/", _values(corpus, attention_options=options))
        assert page.status_code == 400, options
        body = page.content.decode()
        field = body.split('id="id_attention_options_helptext"', 1)[1].split("</div>", 1)[0]
        assert message in field, (options, field)
        assert 'aria-invalid="true"' in re.search(r'<textarea[^>]*name="attention_options"[^>]*>', body).group(0)
    assert not Pipeline.objects.exists()


def test_another_teams_corpus_is_no_choice_for_the_fixed_context(outsider_client, corpus, default_models_db):
    page = outsider_client.post("/pipelines/new/", _values(corpus, name="steal", fixed_context_corpus=str(corpus.pk)))
    assert page.status_code == 400 and not Pipeline.objects.filter(name="steal").exists()


def test_admins_start_the_prefill_and_see_its_progress(owner_client, handbook, django_capture_on_commit_callbacks):
    page = owner_client.get(f"/pipelines/{handbook.pk}/edit/").content.decode()
    assert "Prefill fixed context" in page and "Not prefilled yet" in page
    with django_capture_on_commit_callbacks(execute=False):  # queued: no worker runs it here
        response = owner_client.post(f"/pipelines/{handbook.pk}/prefill/")
    assert response.status_code == 302 and response["Location"] == f"/pipelines/{handbook.pk}/edit/"
    job = Job.objects.get(kind="attention.prefill")
    assert job.params["pipeline_id"] == handbook.pk and job.status == "queued"
    page = owner_client.get(f"/pipelines/{handbook.pk}/edit/").content.decode()
    assert f"Prefill job #{job.pk} started" in page and f"Prefill job #{job.pk}:" in page
    assert f'hx-get="/pipelines/{handbook.pk}/prefill/status/"' in page  # polled while it runs
    Job.objects.filter(pk=job.pk).update(status="running", progress_done=400, message="prefilling the fixed context")
    live = owner_client.get(f"/pipelines/{handbook.pk}/prefill/status/", HTTP_HX_REQUEST="true").content.decode()
    assert 'value="40"' in live and "prefilling the fixed context" in live and "hx-get" in live
    Job.objects.filter(pk=job.pk).update(status="succeeded", progress_done=1000, result={
        "context_tokens": 640, "truncated_tokens": 0, "kv_computed": True, "prefill_s": 1.5,
        "billed": {"usage_record_id": 1, "cost": "0.0000333333"}})
    done = owner_client.get(f"/pipelines/{handbook.pk}/prefill/status/").content.decode()
    assert "640 context tokens" in done and "billed $0.000033" in done and "hx-get" not in done


def test_a_refused_prefill_says_why(owner_client, team_a, default_models_db):
    plain = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", retriever="none")
    page = owner_client.post(f"/pipelines/{plain.pk}/prefill/", follow=True).content.decode()
    assert "The fixed context was not prefilled: pipeline &#x27;plain&#x27; has no fixed context to prefill" in page
    assert not Job.objects.exists()


def test_only_admins_prefill_and_other_teams_get_404(member_client, viewer_client, outsider_client, handbook):
    assert "Prefill fixed context" not in member_client.get(f"/pipelines/{handbook.pk}/edit/").content.decode()
    assert member_client.post(f"/pipelines/{handbook.pk}/prefill/").status_code == 403
    assert viewer_client.post(f"/pipelines/{handbook.pk}/prefill/").status_code == 403
    assert outsider_client.post(f"/pipelines/{handbook.pk}/prefill/").status_code == 404
    assert outsider_client.get(f"/pipelines/{handbook.pk}/prefill/status/").status_code == 404
    assert not Job.objects.exists()


def test_it_saves_prompting_options_and_shows_their_errors_by_the_field(
    member_client, corpus, team_a, default_models_db
):
    values = _values(
        corpus,
        prompting_strategy="superposition",
        prompting_options='{"top_k": 3, "answer_mode": "recompute"}',
    )
    assert member_client.post("/pipelines/new/", values).status_code == 302
    pipeline = Pipeline.objects.get(team=team_a, name="handbook")
    assert pipeline.prompting_options == {"answer_mode": "recompute", "top_k": 3}
    edit = member_client.get(f"/pipelines/{pipeline.pk}/edit/").content.decode()
    assert "{&quot;answer_mode&quot;: &quot;recompute&quot;, &quot;top_k&quot;: 3}" in edit
    for options, message in [
        ('{"top_k": ', "Not valid JSON"),
        ("[2]", "Prompting options must be a JSON object"),
        ('{"topk": 2}', "unknown options for prompting strategy &#x27;superposition&#x27;: topk"),
        ('{"answer_mode": "both"}', "answer_mode must be"),
    ]:
        page = member_client.post(f"/pipelines/{pipeline.pk}/edit/", {**values, "prompting_options": options})
        assert page.status_code == 400, options
        body = page.content.decode()
        field = body.split('id="id_prompting_options_helptext"', 1)[1].split("</div>", 1)[0]
        assert message in field, (options, field)
    pipeline.refresh_from_db()
    assert pipeline.prompting_options == {"answer_mode": "recompute", "top_k": 3}
