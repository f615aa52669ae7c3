"""Budget-aware degradation: as a budget fills, the policy's rule is applied before the hold and stated."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.costs.degradation import degradation_for, degradation_policy_save
from apps.costs.models import Reservation
from apps.costs.services import BudgetExceeded, budget_save
from apps.costs.services.budgets import period_start, window_get_or_create
from apps.rag.degradation import pipeline_degraded
from apps.rag.question_runner import query_start_bound
from apps.rag.services import pipeline_save, query_run_start

QUESTION = "When was the Eiffel Tower completed?"
RULES = [{"above_percent": 80, "top_k_cap": 1}, {"above_percent": 95, "extractive_only": True}]


def _use(budget, share: Decimal) -> None:
    window = window_get_or_create(budget=budget, start=period_start(budget.period, timezone.now()))
    window.spent = (budget.hard_limit * share).quantize(Decimal("0.0000000001"))
    window.save(update_fields=["spent"])


@pytest.fixture
def pipeline(team_a):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         top_k=5, max_output_tokens=64)


def test_rules_are_validated_with_the_reason(team_a):
    for rules, message in [
        ([], "non-empty list"),
        ([{"above_percent": 120, "top_k_cap": 1}], "from 0 to 100"),
        ([{"above_percent": 80}], "at least one of"),
        ([{"above_percent": 80, "top_k_cap": 0}], "whole number"),
        ([{"above_percent": 80, "cheaper": True}], "unknown keys"),
    ]:
        with pytest.raises(ValidationFailed, match=message):
            degradation_policy_save(team=team_a, rules=rules)


def test_the_highest_rule_the_fullest_budget_reached_applies(team_a, make_api_key):
    budget = budget_save(team=team_a, hard_limit=Decimal("1"))
    degradation_policy_save(team=team_a, rules=RULES)
    _use(budget, Decimal("0.5"))
    assert degradation_for(team=team_a) is None
    _use(budget, Decimal("0.85"))
    assert degradation_for(team=team_a)["top_k_cap"] == 1
    _use(budget, Decimal("0.96"))
    rule = degradation_for(team=team_a)
    assert rule["extractive_only"] and rule["above_percent"] == 95 and rule["used_percent"] == 96
    # A key's own policy replaces the team's for that key.
    key = make_api_key(team_a).api_key
    degradation_policy_save(team=team_a, api_key=key, rules=[{"above_percent": 90, "max_tiers": 1}])
    assert degradation_for(team=team_a, api_key=key)["max_tiers"] == 1
    assert degradation_for(team=team_a)["extractive_only"]


def test_fewer_chunks_above_80_percent_are_held_for_and_stated(team_a, alice, pipeline):
    budget = budget_save(team=team_a, hard_limit=Decimal("10"))
    degradation_policy_save(team=team_a, rules=RULES)
    _use(budget, Decimal("0.85"))
    run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    assert run.degradation["top_k_cap"] == 1
    assert run.degradation["note"].startswith("Budget 85% used") and "at most 1 passage" in run.degradation["note"]
    pipeline.refresh_from_db()
    assert pipeline.top_k == 5  # the pipeline itself is unchanged


def test_extractive_only_is_applied_before_the_hold_so_a_nearly_spent_budget_still_answers(
    team_a, alice, pipeline, api_client, make_api_key
):
    degraded = pipeline_degraded(pipeline=pipeline, degradation={"extractive_only": True})
    full = query_start_bound(endpoint=pipeline.model_endpoint, pipeline=pipeline, question=QUESTION, messages=[],
                             max_output_tokens=64)
    cheap = query_start_bound(endpoint=pipeline.model_endpoint, pipeline=degraded, question=QUESTION, messages=[],
                              max_output_tokens=64)
    assert cheap < full
    # 4% of the budget left: room for the extractive answer's hold, not for a generation's.
    limit = ((full + cheap) / 2 / Decimal("0.04")).quantize(Decimal("0.0000000001"))
    budget = budget_save(team=team_a, hard_limit=limit)
    _use(budget, Decimal("0.96"))
    with pytest.raises(BudgetExceeded):  # no policy: the generation's hold does not fit
        query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    degradation_policy_save(team=team_a, rules=RULES)
    run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    assert run.degradation["extractive_only"]
    assert Reservation.objects.get(pk=run.reservation_id).estimate == cheap
    assert "quoting the passages" in run.degradation["note"]
    # Stated over REST.
    key = make_api_key(team_a, user=alice)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    body = api_client.get(f"/api/v1/queries/{run.pk}").json()
    assert body["degradation"]["extractive_only"] is True and body["degradation"]["note"] == run.degradation["note"]


def test_a_retrieval_free_pipeline_cannot_degrade_to_quotes_and_says_so(team_a, alice):
    budget = budget_save(team=team_a, hard_limit=Decimal("1"))
    degradation_policy_save(team=team_a, rules=RULES)
    _use(budget, Decimal("0.97"))
    free = pipeline_save(team=team_a, name="free", model_endpoint="smollm2-135m-instruct", retriever="none")
    with pytest.raises(ValidationFailed, match="cannot quote passages"):
        query_run_start(team=team_a, user=alice, pipeline=free, question=QUESTION)
