"""Cascade pipelines: validated tiers, one hold over every tier, each tier metered, escalation when the scorer says."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.errors import ValidationFailed
from apps.costs import metering
from apps.costs.models import Reservation, Stage, UsageRecord
from apps.rag.cascade import cascade_scorer_save, cascade_start_bound
from apps.rag.question_runner import query_start_bound
from apps.rag.services import (
    pipeline_delete,
    pipeline_save,
    query_run_execute,
    query_run_start,
)
from tests.apps.rag.conftest import fake_search_hits

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the "
                     "World's Fair."),
    ("Paris", "Paris is the capital and most populous city of France."),
]
QUESTION = "When was the Eiffel Tower completed?"


def _tiers(team):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team, name=f"facts-{team.pk}")
    common = dict(model_endpoint="smollm2-135m-instruct", corpora=[corpus], top_k=2)
    return [
        pipeline_save(team=team, name="quotes", prompting_strategy="extractive_answer", **common),
        pipeline_save(team=team, name="small", max_output_tokens=6, **common),
    ]


def _scorer(threshold: float) -> dict:
    """A scorer whose first tier's probability is 0.5 whatever the answer (zero weights)."""
    from workers.rag.cascade import BASE_FEATURES

    n = len(BASE_FEATURES)
    return {"tiers": [{"features": list(BASE_FEATURES), "mean": [0.0] * n, "scale": [1.0] * n,
                       "coef": [0.0] * n, "intercept": 0.0, "threshold": threshold}]}


def test_a_cascade_names_existing_tiers_of_its_own_team(team_a, team_b):
    quotes, small = _tiers(team_a)
    other = _tiers(team_b)[0]
    cascade = pipeline_save(team=team_a, name="cheap-first", model_endpoint="smollm2-135m-instruct",
                            cascade={"tiers": ["quotes", small.pk]})
    assert cascade.cascade == {"tiers": [quotes.pk, small.pk], "scorer": {}}
    assert cascade.is_cascade and not cascade.corpora.exists()
    bad = {
        "no such pipeline": {"tiers": ["quotes", "nope"]},
        "2 to 8 tiers": {"tiers": ["quotes"]},
        "listed twice": {"tiers": ["quotes", "quotes"]},
        "itself a cascade": {"tiers": ["quotes", "cheap-first"]},
        "unknown cascade keys": {"tiers": ["quotes", "small"], "order": 1},
        "2 tier models; 2 tiers need 1": {"tiers": ["quotes", "small"],
                                          "scorer": {"tiers": _scorer(0.5)["tiers"] * 2}},
        "scorer tier 1": {"tiers": ["quotes", "small"], "scorer": {"tiers": [{"features": ["support"]}]}},
    }
    for message, config in bad.items():
        with pytest.raises(ValidationFailed, match=message):
            pipeline_save(team=team_a, name="x", model_endpoint="smollm2-135m-instruct", cascade=config)
    with pytest.raises(ValidationFailed, match="own tiers"):
        pipeline_save(team=team_a, name="cheap-first", pipeline=cascade, model_endpoint="smollm2-135m-instruct",
                      cascade={"tiers": ["quotes", cascade.pk]})
    with pytest.raises(ValidationFailed, match="a tier cannot be a cascade"):
        pipeline_save(team=team_a, name="quotes", pipeline=quotes, model_endpoint="smollm2-135m-instruct",
                      cascade={"tiers": ["small", _tiers_extra(team_a).pk]})
    with pytest.raises(ValidationFailed, match="is a tier of cascade 'cheap-first'"):
        pipeline_delete(pipeline=small)
    with pytest.raises(ValidationFailed, match="no such pipeline"):  # another team's pipeline is not found
        pipeline_save(team=team_a, name="y", model_endpoint="smollm2-135m-instruct",
                      cascade={"tiers": ["quotes", other.pk]})


def _tiers_extra(team):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team, name="more")
    return pipeline_save(team=team, name="extra", model_endpoint="smollm2-135m-instruct", corpora=[corpus])


@pytest.fixture
def cascade_setup(team_a, smollm2, monkeypatch, settings, tmp_path):
    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES)
    quotes, small = _tiers(team_a)
    cascade = pipeline_save(team=team_a, name="cheap-first", model_endpoint="smollm2-135m-instruct",
                            cascade={"tiers": ["quotes", "small"], "scorer": _scorer(0.9)})
    return quotes, small, cascade


@pytest.mark.slow  # the real SmolLM2 and MiniLM
def test_a_cascade_escalates_when_the_scorer_doubts_and_meters_every_tier_under_one_hold(
    team_a, alice, cascade_setup
):
    from apps.costs.services import budget_save

    budget_save(team=team_a, hard_limit=Decimal("5"))
    quotes, small, cascade = cascade_setup
    bounds = [query_start_bound(endpoint=t.model_endpoint, pipeline=t, question=QUESTION, messages=[],
                                max_output_tokens=t.max_output_tokens) for t in (quotes, small)]
    started = query_run_start(team=team_a, user=alice, pipeline=cascade, question=QUESTION)
    held = Reservation.objects.get(pk=started.reservation_id).estimate
    assert held == sum(bounds) == cascade_start_bound(
        pipeline=cascade, question=QUESTION, messages=[], max_output_tokens=started.max_output_tokens)
    assert held >= max(bounds)  # the hold covers every tier's start, not just the first's
    run = query_run_execute(query_run_id=started.pk)
    assert run.status == "succeeded", run.error
    trace = run.cascade
    assert [t["decision"] for t in trace["tiers"]] == ["escalate", "accept"]
    assert trace["tiers"][0]["score"] == 0.5 and trace["tiers"][0]["threshold"] == 0.9
    assert "0.50 < threshold 0.90" in trace["tiers"][0]["reason"]
    assert trace["answered_by"] == "small" and trace["tier"] == 1
    assert run.answer == trace["tiers"][1]["answer"] and run.finish_reason != "extractive"
    rows = UsageRecord.objects.filter(query_run_id=run.pk)
    by_tier = {name: sorted(rows.filter(pipeline_name=name).values_list("stage", flat=True))
               for name in ("quotes", "small")}
    assert by_tier["quotes"] == [Stage.EMBED, Stage.RETRIEVE]  # the extractive tier: no generation
    assert Stage.GENERATE in by_tier["small"] and Stage.RETRIEVE in by_tier["small"]
    assert rows.count() == len(by_tier["quotes"]) + len(by_tier["small"])
    for tier in trace["tiers"]:
        assert Decimal(tier["cost"]) == sum(r.cost for r in rows.filter(pipeline_name=tier["pipeline"]))
    reservation = Reservation.objects.get(pk=run.reservation_id)
    assert reservation.status == "settled"
    assert reservation.actual == run.cost == sum(r.cost for r in rows)


@pytest.mark.slow  # MiniLM
def test_a_confident_first_tier_answers_alone(team_a, alice, cascade_setup, monkeypatch):
    quotes, small, cascade = cascade_setup
    cascade.cascade["scorer"] = _scorer(0.4)
    cascade.save()

    def refuse(endpoint):
        raise AssertionError("the generator tier must not run")

    monkeypatch.setattr(metering, "_target_override", refuse)
    run = query_run_execute(query_run_id=query_run_start(team=team_a, user=alice, pipeline=cascade,
                                                         question=QUESTION).pk)
    assert run.status == "succeeded", run.error
    assert run.cascade["answered_by"] == "quotes" and run.cascade["tiers_run"] == 1
    assert run.finish_reason == "extractive" and "1889" in run.answer
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.GENERATE).exists()


def test_a_scorer_is_fit_from_labelled_rows_and_stored_as_json(team_a):
    quotes, small = _tiers(team_a)
    cascade = pipeline_save(team=team_a, name="cheap-first", model_endpoint="smollm2-135m-instruct",
                            cascade={"tiers": ["quotes", "small"]})
    rows = []
    for q in range(30):
        right = q % 3 != 0
        rows.append({"question": q, "tier": "quotes", "correct": right, "cost": "0.000001",
                     "quality_label": "grounded" if right else "unsupported", "support": 1.0 if right else 0.0,
                     "support_score": 0.8 if right else 0.1, "answer": "x y"})
        rows.append({"question": q, "tier": "small", "correct": True, "cost": "0.00001",
                     "quality_label": "grounded", "support": 1.0, "support_score": 0.7, "answer": "x"})
    cascade = cascade_scorer_save(pipeline=cascade, rows=rows)
    cascade.refresh_from_db()
    scorer = cascade.cascade["scorer"]
    assert len(scorer["tiers"]) == 1 and scorer["objective"]["met"]
    assert scorer["objective"]["fit_accuracy"] == 1.0  # escalates exactly the unsupported ones
    assert scorer["objective"]["fit_cost_per_question"] < 0.00001
    with pytest.raises(ValidationFailed, match="unknown tier"):
        cascade_scorer_save(pipeline=cascade, rows=[{**rows[0], "tier": "nope"}])
