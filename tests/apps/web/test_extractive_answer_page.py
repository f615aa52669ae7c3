"""The Ask page of an extractive pipeline: the quoted answer links its source, the cost panel has no generation."""

from __future__ import annotations

import pytest

from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db


def test_ask_shows_the_quote_with_its_citation_and_no_generation_cost(
    member_client, team_a, corpus, default_models_db, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.costs import metering
    from apps.rag.services import pipeline_save
    from tests.apps.rag.conftest import fake_search_hits

    def refuse(endpoint):
        raise AssertionError("an extractive answer must not load the generator")

    monkeypatch.setattr(metering, "_target_override", refuse)
    fake_search_hits(monkeypatch, [
        ("Zebra", "Zebras are African equines. They have black-and-white striped coats."),
        ("Horse", "The horse is a domesticated mammal."),
    ])
    pipeline = pipeline_save(team=team_a, name="quotes", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             prompting_strategy="extractive_answer")
    with django_capture_on_commit_callbacks(execute=True):
        response = member_client.post("/ask/", {"pipeline": pipeline.pk, "question": "What coats do zebras have?"})
    assert response.status_code == 302
    run = QueryRun.objects.get()
    assert run.status == "succeeded", run.error
    page = member_client.get(f"/ask/runs/{run.pk}/").content.decode()
    assert "They have black-and-white striped coats. " in page
    assert '<a class="cite"' in page and ">[1]</a>" in page  # the marker links the passage
    assert "no model wrote this answer" in page
    assert "<td>embed</td>" in page and "<td>generate</td>" not in page
