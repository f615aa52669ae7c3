"""Ask: start a question, the streaming partial, citations, the cost panel, budget refusals, history."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db


def _ask(client, pipeline, capture, question="What do zebras look like?"):
    with capture(execute=True):
        return client.post("/ask/", {"pipeline": pipeline.pk, "question": question})


def test_the_ask_page_offers_the_teams_pipelines(member_client, pipeline):
    page = member_client.get("/ask/")
    assert page.status_code == 200
    assert b"handbook-qa" in page.content
    assert b'<label for="id_question">' in page.content


def test_asking_runs_the_pipeline_and_shows_the_answer_and_costs(
    member_client, pipeline, echo_model, django_capture_on_commit_callbacks
):
    response = _ask(member_client, pipeline, django_capture_on_commit_callbacks)
    run = QueryRun.objects.get()
    assert response.status_code == 302 and response.url == f"/ask/runs/{run.pk}/"
    assert run.status == "succeeded"
    page = member_client.get(response.url).content.decode()
    assert "Zebras have stripes" in page
    assert "Tokens and cost per stage" in page and "generate" in page
    assert "Naive RAG would cost" in page and "Latency" in page
    assert 'aria-live="polite"' in page
    assert "hx-trigger" not in page  # finished: no polling
    history = member_client.get("/ask/").content.decode()
    assert "What do zebras look like?" in history


def test_the_live_partial_polls_while_running_and_stops_when_done(
    member_client, pipeline, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        member_client.post("/ask/", {"pipeline": pipeline.pk, "question": "Anything?"})
    run = QueryRun.objects.get()
    QueryRun.objects.filter(pk=run.pk).update(status="running", answer="Zebras ha")
    live = member_client.get(f"/ask/runs/{run.pk}/live/", HTTP_HX_REQUEST="true")
    assert live.status_code == 200
    assert b'hx-trigger="every 300ms"' in live.content and b"Zebras ha" in live.content
    QueryRun.objects.filter(pk=run.pk).update(status="succeeded", answer="Zebras have stripes")
    done = member_client.get(f"/ask/runs/{run.pk}/live/", HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # HTMX: stop polling
    assert b"hx-trigger" not in done.content and b"Zebras have stripes" in done.content


def test_a_budget_refusal_names_the_budget_and_the_overage(member_client, pipeline, team_a):
    from apps.costs.services import budget_save

    budget_save(team=team_a, hard_limit=Decimal("0.000001"), period="day")
    page = member_client.post("/ask/", {"pipeline": pipeline.pk, "question": "Too expensive?"})
    assert page.status_code == 402
    body = page.content.decode()
    assert "a budget would be exceeded" in body
    assert "the day budget of team &#x27;Team A&#x27;" in body or "The day budget of team" in body
    assert "Over by" in body
    assert not QueryRun.objects.exists()


def test_viewers_read_answers_but_cannot_ask(viewer_client, pipeline):
    page = viewer_client.get("/ask/")
    assert page.status_code == 200 and b"Viewers can read" in page.content
    assert viewer_client.post("/ask/", {"pipeline": pipeline.pk, "question": "Hi?"}).status_code == 403
    assert not QueryRun.objects.exists()


def test_another_teams_pipeline_and_runs_are_invisible(
    outsider_client, member_client, pipeline, echo_model, django_capture_on_commit_callbacks
):
    _ask(member_client, pipeline, django_capture_on_commit_callbacks)
    run = QueryRun.objects.get()
    assert outsider_client.get(f"/ask/runs/{run.pk}/").status_code == 404
    assert outsider_client.get(f"/ask/runs/{run.pk}/live/").status_code == 404
    page = outsider_client.get("/ask/").content
    assert b"handbook-qa" not in page and b"What do zebras" not in page
    # Posting another team's pipeline id is an invalid choice, not a run.
    assert outsider_client.post("/ask/", {"pipeline": pipeline.pk, "question": "Hi?"}).status_code == 400
    assert QueryRun.objects.count() == 1


@pytest.mark.slow
def test_citations_link_to_the_cited_passage(
    member_client, pipeline, corpus, echo_model, django_capture_on_commit_callbacks
):
    from apps.corpora.services import document_upload, documents_ingest

    document = document_upload(
        corpus=corpus, filename="zebra.txt", data=b"Zebras are striped African equines.", start_job=False
    )
    documents_ingest(documents=[document])
    _ask(member_client, pipeline, django_capture_on_commit_callbacks)
    run = QueryRun.objects.get()
    chunk = document.chunks.get()
    assert run.citations[0]["chunk_id"] == chunk.pk and run.citations[0]["cited"]
    page = member_client.get(f"/ask/runs/{run.pk}/").content.decode()
    link = f"/documents/{document.pk}/?chunk={chunk.pk}#chunk-{chunk.pk}"
    assert f'<a class="cite" href="{link}"' in page  # the [1] in the answer
    assert "cited" in page
    passage = member_client.get(f"/documents/{document.pk}/", {"chunk": chunk.pk}).content.decode()
    assert f'id="chunk-{chunk.pk}" class="chunk cited"' in passage
    assert run.cost > 0
