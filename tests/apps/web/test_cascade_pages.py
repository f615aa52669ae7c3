"""Cascades in the browser: the pipeline form edits a cascade's tiers (the cascade rules' errors on the field,
a scorer kept while the tiers stay), the evaluation page fits a cascade's scorer from its rows, and the
pipeline page shows where the scorer came from."""

from __future__ import annotations

import pytest

from apps.rag.models import Pipeline
from apps.rag.services import pipeline_save
from tests.apps.web.test_pipeline_pages import _values
from tests.support.cascade_eval import cascade_with_tiers, evaluation_with_rows

pytestmark = pytest.mark.django_db


def _tiers(*pipelines) -> dict:
    return {f"cascade_{i}": str(p.pk) for i, p in enumerate(pipelines)}


def test_members_make_a_cascade_with_the_form_and_its_rules_show_on_the_field(member_client, corpus, team_a):
    cascade, quotes, big = cascade_with_tiers(team_a)
    page = member_client.get("/pipelines/new/").content.decode()
    assert 'name="cascade_0"' in page and 'aria-label="Tier 8"' in page
    options = page.split('name="cascade_0"')[1].split("</select>")[0]
    assert ">quotes<" in options and ">big<" in options and ">cheap-first<" not in options  # no nesting
    one = member_client.post("/pipelines/new/", _values(corpus, name="fast", **_tiers(quotes)))
    assert one.status_code == 400 and "a cascade has 2 to 8 tiers; got 1" in one.content.decode()
    twice = member_client.post("/pipelines/new/", _values(corpus, name="fast", **_tiers(quotes, quotes)))
    assert twice.status_code == 400 and "listed twice" in twice.content.decode()
    assert 'aria-invalid="true"' in twice.content.decode()
    assert not Pipeline.objects.filter(name="fast").exists()
    made = member_client.post("/pipelines/new/", _values(corpus, name="fast", **_tiers(big, quotes)))
    assert made.status_code == 302
    fast = Pipeline.objects.get(team=team_a, name="fast")
    assert fast.cascade == {"tiers": [big.pk, quotes.pk], "scorer": {}} and not fast.corpora.exists()
    edit = member_client.get(f"/pipelines/{fast.pk}/edit/").content.decode()
    first = edit.split('name="cascade_0"')[1].split("</select>")[0]
    assert f'value="{big.pk}" selected' in first
    # A tier cannot become a cascade (the rule's message on the field).
    third = pipeline_save(team=team_a, name="third", model_endpoint="smollm2-135m-instruct", retriever="none")
    refused = member_client.post(f"/pipelines/{quotes.pk}/edit/",
                                 _values(corpus, name="quotes", prompting_strategy="extractive_answer",
                                         **_tiers(big, third)))
    assert refused.status_code == 400 and "is a tier of cascade" in refused.content.decode()
    quotes.refresh_from_db()
    assert not quotes.is_cascade


def test_a_scorer_stays_while_the_tiers_do_and_goes_when_they_change(member_client, corpus, team_a):
    cascade, quotes, big = cascade_with_tiers(team_a)
    from apps.evaluations.cascade_fit import cascade_scorer_fit_from_evaluation

    run = evaluation_with_rows(team_a, [quotes, big])
    cascade_scorer_fit_from_evaluation(pipeline=cascade, evaluation=run, objective="accuracy_floor", value="1")
    cascade.refresh_from_db()
    scorer = cascade.cascade["scorer"]
    same = member_client.post(f"/pipelines/{cascade.pk}/edit/",
                              _values(corpus, name="cheap-first", description="renamed", **_tiers(quotes, big)))
    assert same.status_code == 302
    cascade.refresh_from_db()
    assert cascade.cascade["scorer"] == scorer and cascade.description == "renamed"
    third = pipeline_save(team=team_a, name="third", model_endpoint="smollm2-135m-instruct", retriever="none")
    changed = member_client.post(f"/pipelines/{cascade.pk}/edit/",
                                 _values(corpus, name="cheap-first", **_tiers(quotes, third)), follow=True)
    assert "its scorer was removed" in changed.content.decode()
    cascade.refresh_from_db()
    assert cascade.cascade == {"tiers": [quotes.pk, third.pk], "scorer": {}}


def test_the_evaluation_page_fits_a_cascade_and_the_pipeline_page_shows_its_provenance(member_client, team_a):
    cascade, quotes, big = cascade_with_tiers(team_a)
    third = pipeline_save(team=team_a, name="third", model_endpoint="smollm2-135m-instruct", retriever="none")
    pipeline_save(team=team_a, name="elsewhere", model_endpoint="smollm2-135m-instruct",
                  cascade={"tiers": [quotes.pk, third.pk]})
    run = evaluation_with_rows(team_a, [quotes, big])
    page = member_client.get(f"/evaluations/{run.pk}/").content.decode()
    assert 'data-cascade="cheap-first"' in page and "Fit cascade scorer" in page
    assert 'data-cascade="elsewhere"' not in page  # its tier 'third' did not run in this job
    assert "quotes → big" in page
    fitted = member_client.post(f"/evaluations/{run.pk}/cascade-scorer/",
                                {"pipeline": cascade.pk, "objective": "accuracy_floor", "value": "1"})
    assert fitted.status_code == 302 and fitted["Location"] == f"/evaluations/{run.pk}/#fit-{cascade.pk}"
    cascade.refresh_from_db()
    assert cascade.cascade["scorer"]["objective"]["provenance"]["evaluation"] == run.pk
    body = member_client.get(fitted["Location"].split("#")[0]).content.decode()
    assert "Scorer of cheap-first fit on 20 questions: 100% contained at $0.000004 per question." in body
    summary = body.split(f'id="fit-{cascade.pk}"')[1].split("</article>")[0]
    assert 'data-testid="scorer-provenance"' in summary and "20 questions every tier answered" in summary
    assert "$0.000004<" in summary and "quotes alone" in summary and "always answers" in summary
    assert f'href="/pipelines/{cascade.pk}/edit/"' in summary
    edit = member_client.get(f"/pipelines/{cascade.pk}/edit/").content.decode()
    scorer = edit.split('id="scorer-h"')[1].split("</section>")[0]
    assert f'<a href="/evaluations/{run.pk}/">evaluation #{run.pk}</a>' in scorer and "accuracy floor 100%" in scorer


def test_the_fit_form_shows_its_errors_and_stores_nothing(member_client, viewer_client, outsider_client, team_a):
    cascade, quotes, big = cascade_with_tiers(team_a)
    run = evaluation_with_rows(team_a, [quotes, big])
    url = f"/evaluations/{run.pk}/cascade-scorer/"
    for data, message in (
        ({"objective": "accuracy_floor", "value": "80"}, "an accuracy floor is a share above 0 and at most 1"),
        ({"objective": "cheapest", "value": "1"}, "Select a valid choice"),
        ({"objective": "cost_target", "value": ""}, "a cost target needs a value"),
    ):
        page = member_client.post(url, {"pipeline": cascade.pk, **data})
        assert page.status_code == 400, data
        form = page.content.decode().split(f'id="fit-{cascade.pk}"')[1].split("</article>")[0]
        assert message in form and 'aria-invalid="true"' in form, data
    few = evaluation_with_rows(team_a, [quotes, big], questions=5)
    page = member_client.post(f"/evaluations/{few.pk}/cascade-scorer/",
                              {"pipeline": cascade.pk, "objective": "accuracy_floor", "value": "0.9"})
    assert page.status_code == 400 and "fitting needs at least 10" in page.content.decode()
    cascade.refresh_from_db()
    assert cascade.cascade["scorer"] == {}
    assert viewer_client.post(url, {"pipeline": cascade.pk, "objective": "accuracy_floor"}).status_code == 403
    assert "Fit cascade scorer" not in viewer_client.get(f"/evaluations/{run.pk}/").content.decode()
    assert outsider_client.post(url, {"pipeline": cascade.pk, "objective": "accuracy_floor"}).status_code == 404
    assert member_client.post(url, {"pipeline": "x", "objective": "accuracy_floor"}).status_code == 404
