"""Pipelines: a form that explains each option, validation errors, permissions."""

from __future__ import annotations

import pytest

from apps.rag.models import Pipeline

pytestmark = pytest.mark.django_db


def _values(corpus, **overrides):
    values = {
        "name": "cheap-qa", "description": "", "model_endpoint": "smollm2-135m-instruct", "corpora": [corpus.pk],
        "retriever": "hybrid", "top_k": 3, "compression_method": "none", "compression_target": 1.0,
        "prompting_strategy": "naive", "attention_backend": "full", "max_output_tokens": 64, "system_prompt": "",
    }
    return {**values, **overrides}


def test_the_form_explains_every_option_and_its_cost(member_client, corpus, default_models_db):
    page = member_client.get("/pipelines/new/")
    assert page.status_code == 200
    body = page.content.decode()
    # The model's own help_text, and the registries' method names with descriptions.
    assert "Passages retrieved; each adds its tokens to the prompt (the main cost driver)" in body
    assert "Caps the answer, and the worst-case cost" in body
    assert "its tokens are paid on every query" in body
    assert '<option value="none"' in body and '<option value="naive"' in body
    # Each registered method is listed with its own description, inside the field's help text.
    assert '<ul class="option-help"><li><code>' in body and "<code>naive</code>: Naive RAG prompting" in body
    assert 'aria-describedby="id_top_k_helptext"' in body
    for name in ("name", "top_k", "compression_method", "prompting_strategy", "max_output_tokens", "system_prompt"):
        assert f'<label for="id_{name}">' in body, name


def test_members_create_and_edit_pipelines(member_client, corpus, team_a, default_models_db):
    response = member_client.post("/pipelines/new/", _values(corpus))
    assert response.status_code == 302
    pipeline = Pipeline.objects.get(team=team_a, name="cheap-qa")
    assert pipeline.top_k == 3 and list(pipeline.corpora.all()) == [corpus]
    edit = member_client.get(f"/pipelines/{pipeline.pk}/edit/")
    assert b'value="cheap-qa"' in edit.content
    refused = member_client.post(f"/pipelines/{pipeline.pk}/edit/", _values(corpus, top_k=7, corpora=[]))
    assert refused.status_code == 400 and b"at least one corpus is required" in refused.content
    member_client.post(f"/pipelines/{pipeline.pk}/edit/", _values(corpus, top_k=7, corpora=[], retriever="none"))
    pipeline.refresh_from_db()
    assert pipeline.top_k == 7 and not pipeline.corpora.exists() and pipeline.retriever == "none"
    assert b"cheap-qa" in member_client.get("/pipelines/").content


def test_validation_errors_are_shown_by_the_field(member_client, corpus, default_models_db, pipeline):
    page = member_client.post("/pipelines/new/", _values(corpus, top_k=0, name="bad name!"))
    assert page.status_code == 400
    body = page.content.decode()
    assert 'aria-invalid="true"' in body and "Please correct the fields" in body
    duplicate = member_client.post("/pipelines/new/", _values(corpus, name="handbook-qa"))
    assert duplicate.status_code == 400 and b"already has a pipeline called" in duplicate.content
    target = member_client.post("/pipelines/new/", _values(corpus, compression_target=0))
    assert target.status_code == 400 and b"compression target must be" in target.content
    assert Pipeline.objects.count() == 1


def test_viewers_cannot_create_or_edit(viewer_client, corpus, pipeline):
    assert viewer_client.get("/pipelines/").status_code == 200
    assert b"New pipeline" not in viewer_client.get("/pipelines/").content
    assert viewer_client.get("/pipelines/new/").status_code == 403
    assert viewer_client.post("/pipelines/new/", _values(corpus)).status_code == 403
    assert viewer_client.post(f"/pipelines/{pipeline.pk}/edit/", _values(corpus, top_k=9)).status_code == 403
    pipeline.refresh_from_db()
    assert pipeline.top_k == 5


def test_another_team_gets_404_and_cannot_use_our_corpora(outsider_client, corpus, pipeline, bob):
    assert outsider_client.get(f"/pipelines/{pipeline.pk}/edit/").status_code == 404
    assert outsider_client.post(f"/pipelines/{pipeline.pk}/delete/").status_code == 404
    assert b"handbook-qa" not in outsider_client.get("/pipelines/").content
    # Team A's corpus id is no valid choice on team B's form.
    page = outsider_client.post("/pipelines/new/", _values(corpus, name="steal"))
    assert page.status_code == 400 and not Pipeline.objects.filter(name="steal").exists()


def test_only_admins_delete(member_client, owner_client, pipeline):
    assert member_client.post(f"/pipelines/{pipeline.pk}/delete/").status_code == 403
    assert owner_client.post(f"/pipelines/{pipeline.pk}/delete/").status_code == 302
    assert not Pipeline.objects.exists()
