"""A cascade's scorer fit from an evaluation job's labelled rows: thresholds and provenance stored, the
expected accuracy and cost against each tier alone, and every refusal (nothing stored)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.errors import ValidationFailed
from apps.evaluations.cascade_fit import cascade_scorer_fit_from_evaluation
from apps.evaluations.models import EvalRow
from apps.rag.models import Pipeline
from tests.support.cascade_eval import cascade_with_tiers, evaluation_with_rows

pytestmark = pytest.mark.django_db


def test_it_fits_the_scorer_from_the_jobs_rows_and_stores_its_provenance(team_a, alice):
    cascade, quotes, big = cascade_with_tiers(team_a)
    run = evaluation_with_rows(team_a, [quotes, big])
    summary = cascade_scorer_fit_from_evaluation(pipeline=cascade, evaluation=run, objective="accuracy_floor",
                                                 value="1", user=alice)
    cascade.refresh_from_db()
    scorer = cascade.cascade["scorer"]
    assert len(scorer["tiers"]) == 1 and scorer["tiers"][0]["n"] == 20
    assert scorer["tiers"][0]["threshold"] == summary["tiers"][0]["threshold"] < 1
    assert scorer["objective"]["provenance"] == summary
    assert (summary["evaluation"], summary["questions"], summary["rows"], summary["objective"], summary["value"],
            summary["fitted_by"], summary["met"]) == (run.pk, 20, 40, "accuracy_floor", 1.0, "alice", True)
    # The 7 questions quotes gets wrong (q0, q3, ..., q18) escalate to big; the other 13 stop at quotes.
    assert summary["cascade"] == {"accuracy": 1.0, "cost_per_question": "0.0000045000"}
    assert [(t["pipeline"], t["accuracy"], t["cost_per_question"], t["answered"]) for t in summary["tiers"]] == [
        ("quotes", 0.65, "0.0000010000", 13), ("big", 1.0, "0.0000100000", 7)]
    assert summary["tiers"][1]["threshold"] is None  # the last tier always answers


def test_a_cost_target_keeps_the_mean_cost_within_it(team_a):
    cascade, quotes, big = cascade_with_tiers(team_a)
    run = evaluation_with_rows(team_a, [quotes, big])
    summary = cascade_scorer_fit_from_evaluation(pipeline=cascade, evaluation=run, objective="cost_target",
                                                 value="0.000002")
    assert summary["met"] and summary["value"] == "0.000002"
    assert Decimal(summary["cascade"]["cost_per_question"]) <= Decimal("0.000002")
    assert summary["cascade"]["accuracy"] >= 0.65
    cascade.refresh_from_db()
    assert cascade.cascade["scorer"]["objective"]["cost_target"] == pytest.approx(0.000002)
    # No value for an accuracy floor: the last tier's accuracy on the rows (here 1.0).
    default = cascade_scorer_fit_from_evaluation(pipeline=cascade, evaluation=run, objective="accuracy_floor")
    assert default["value"] == 1.0 and default["cascade"]["accuracy"] == 1.0


def _refused(cascade, run, match, **kwargs):
    before = dict(cascade.cascade)
    with pytest.raises(ValidationFailed, match=match):
        cascade_scorer_fit_from_evaluation(pipeline=cascade, evaluation=run,
                                           **{"objective": "accuracy_floor", "value": 0.9, **kwargs})
    cascade.refresh_from_db()
    assert cascade.cascade == before  # nothing stored


def test_it_refuses_a_job_without_every_tier_too_few_rows_or_one_class(team_a, team_b):
    cascade, quotes, big = cascade_with_tiers(team_a)
    _refused(cascade, evaluation_with_rows(team_a, [quotes]), r"did not run tier\(s\) 'big' of cascade 'cheap-first'")
    _refused(cascade, evaluation_with_rows(team_a, [quotes, big], questions=9), "9 question.*at least 10")
    _refused(cascade, evaluation_with_rows(team_a, [quotes, big], right=lambda q: True),
             "tier 'quotes' answered all 20 questions right")
    failed = evaluation_with_rows(team_a, [quotes, big], questions=11)
    EvalRow.objects.filter(run=failed, pipeline_name="big", item_id__in=["q1", "q2"]).update(status="failed")
    _refused(cascade, failed, "9 question")  # a question a tier failed on is not labelled for every tier
    run = evaluation_with_rows(team_a, [quotes, big])
    _refused(cascade, run, "unknown objective", objective="cheapest")
    _refused(cascade, run, "an accuracy floor is a share", value="80")
    _refused(cascade, run, "must be a number", value="lots")
    _refused(cascade, run, "a cost target is dollars per question above 0", objective="cost_target", value="-1")
    _refused(cascade, run, "cost target needs a value", objective="cost_target", value=None)
    _refused(cascade, evaluation_with_rows(team_a, [quotes, big], status="running"), "still running")
    _refused(quotes, run, "'quotes' is not a cascade")
    other, *other_tiers = cascade_with_tiers(team_b)
    _refused(cascade, evaluation_with_rows(team_b, other_tiers), "unknown evaluation")


def test_rest_fits_the_scorer_with_an_admin_key_and_refuses_the_rest(api_client, make_api_key, team_a, team_b):
    cascade, quotes, big = cascade_with_tiers(team_a)
    run = evaluation_with_rows(team_a, [quotes, big])
    url = f"/api/v1/pipelines/{cascade.pk}/cascade-scorer"
    reader = make_api_key(team_a, scopes=["read", "query"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {reader.raw_key}")
    denied = api_client.post(url, {"evaluation": run.pk, "objective": "accuracy_floor", "value": 1}, format="json")
    assert denied.status_code == 403 and "'admin' scope" in denied.json()["error"]["message"]
    admin = make_api_key(team_a, scopes=["admin"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin.raw_key}")
    fitted = api_client.post(url, {"evaluation": run.pk, "objective": "accuracy_floor", "value": 1}, format="json")
    assert fitted.status_code == 200, fitted.content
    body = fitted.json()
    assert (body["evaluation"], body["questions"], body["rows"], body["met"]) == (run.pk, 20, 40, True)
    assert body["cascade"] == {"accuracy": 1.0, "cost_per_question": "0.0000045000"}
    assert [t["pipeline"] for t in body["tiers"]] == ["quotes", "big"] and body["tiers"][1]["threshold"] is None
    cascade.refresh_from_db()
    assert cascade.cascade["scorer"]["objective"]["provenance"]["evaluation"] == run.pk
    shown = api_client.get(f"/api/v1/pipelines/{cascade.pk}").json()
    assert shown["cascade"]["scorer"]["tiers"][0]["threshold"] == body["tiers"][0]["threshold"]
    target = api_client.post(url, {"evaluation": run.pk, "objective": "cost_target", "value": "0.000002"},
                             format="json").json()
    assert target["value"] == "0.000002" and Decimal(target["cascade"]["cost_per_question"]) <= Decimal("0.000002")
    partial = evaluation_with_rows(team_a, [quotes])
    missing = api_client.post(url, {"evaluation": partial.pk, "objective": "accuracy_floor"}, format="json")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "tiers_missing"
    assert missing.json()["error"]["detail"]["missing"] == ["big"]
    other_run = evaluation_with_rows(team_b, cascade_with_tiers(team_b)[1:])
    unknown = api_client.post(url, {"evaluation": other_run.pk, "objective": "accuracy_floor"}, format="json")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_evaluation"
    bad = api_client.post(url, {"evaluation": run.pk, "objective": "cheapest"}, format="json")
    assert bad.status_code == 400
    other_cascade = Pipeline.objects.get(team=team_b, name="cheap-first")
    assert api_client.post(f"/api/v1/pipelines/{other_cascade.pk}/cascade-scorer",
                           {"evaluation": run.pk, "objective": "accuracy_floor"}, format="json").status_code == 404
