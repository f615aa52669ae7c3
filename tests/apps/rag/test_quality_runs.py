"""A run's quality signals: computed after generation, stored on the run, the embedding billed under its hold."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.costs import metering
from apps.costs.models import Stage, UsageRecord
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.apps.rag.conftest import fake_search_hits
from tests.support.holds import refuse_hold_growth
from workers.rag.quality import SCORE_MODEL
from workers.runtime.meter import EchoTarget

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the "
                     "World's Fair."),
    ("Paris", "Paris is the capital and most populous city of France."),
]
QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture
def pipeline(team_a, monkeypatch, settings, tmp_path):
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    fake_search_hits(monkeypatch, PASSAGES)
    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         max_output_tokens=16)


def _ask(team, user, pipeline, monkeypatch, reply: str) -> QueryRun:
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply=reply))
    return query_run_execute(query_run_id=query_run_start(team=team, user=user, pipeline=pipeline,
                                                          question=QUESTION).pk)


@pytest.mark.slow  # loads and measures MiniLM (about 40 s on a busy 2-core machine)
def test_a_supported_answer_is_grounded_and_its_embedding_is_billed(team_a, alice, pipeline, monkeypatch):
    run = _ask(team_a, alice, pipeline, monkeypatch, "It was completed in 1889 [1] [6].")
    assert run.status == "succeeded" and run.quality_label == "grounded"
    assert run.answer == "It was completed in 1889 [1]." and run.citations_removed == 1
    assert run.support == 1.0 and run.quality["evidence"] > 0.5
    assert run.support_score == pytest.approx(SCORE_MODEL.score(evidence=run.quality["evidence"], logprob_mean=None,
                                                                fit=run.quality["question_fit"]), abs=1e-4)
    assert run.quality["embedded"] is True and run.quality["sentences"][0]["passage"] == 1
    embed = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.EMBED)
    assert embed.model_name == "local/all-minilm-l6-v2" and embed.prompt_tokens > 20 and embed.cost > 0
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
    assert run.reservation.status == "settled" and run.reservation.actual == run.cost


@pytest.mark.slow
def test_an_invented_answer_is_unsupported_but_still_succeeded(team_a, alice, pipeline, monkeypatch):
    run = _ask(team_a, alice, pipeline, monkeypatch, "The company's CEO, John Smith, founded it.")
    assert run.status == "succeeded" and run.quality_label == "unsupported" and run.support == 0.0


def test_without_room_in_the_hold_support_falls_back_to_token_overlap(team_a, alice, pipeline, monkeypatch):
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name,
                                                                                    reply="In 1889 [1]."))
    from decimal import Decimal

    from apps.corpora.services import embedding

    run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    refuse_hold_growth(monkeypatch)
    # An embedding bound past what the hold has left: the hold would have to grow, and may not.
    monkeypatch.setattr(embedding, "texts_bound", lambda **kwargs: Decimal("1000"))
    run = query_run_execute(query_run_id=run.pk)
    assert run.status == "succeeded" and run.quality["embedded"] is False
    assert run.quality_label == "grounded"
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.EMBED).exists()


# Runs store citations' retrievers as {"rank", "score"} (docs/api.md; rag 0007 converted older pairs).
def test_a_pipeline_abstains_when_retrieval_is_weaker_than_its_history(team_a, alice, pipeline, monkeypatch):
    earlier_hit = {"n": 1, "score": 0.99, "retrievers": {"dense": {"rank": 1, "score": 0.99}}}
    for _ in range(5):
        QueryRun.objects.create(team=team_a, pipeline=pipeline, question="q", status="succeeded",
                                citations=[earlier_hit])
    for n, hit in enumerate(fake_search_hits(monkeypatch, PASSAGES)):  # weaker hits than any earlier run's
        hit.score, hit.retrievers = 0.3 - n / 10, {"dense": (n + 1, 0.3 - n / 10)}
    pipeline = pipeline_save(team=team_a, name="facts", pipeline=pipeline, model_endpoint="smollm2-135m-instruct",
                             abstain_below=0.2)
    run = _ask(team_a, alice, pipeline, monkeypatch, "should not be generated")
    assert run.status == "succeeded" and run.quality_label == "abstained" and run.finish_reason == "abstained"
    assert run.answer == "Not found in the documents." and run.retrieval_confidence == 0.0
    stages = set(UsageRecord.objects.filter(query_run_id=run.pk).values_list("stage", flat=True))
    assert stages == {Stage.RETRIEVE}  # nothing generated, nothing embedded


def test_abstain_below_is_validated(team_a, pipeline):
    from apps.core.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="abstain_below"):
        pipeline_save(team=team_a, name="facts", pipeline=pipeline, model_endpoint="smollm2-135m-instruct",
                      abstain_below=1.5)


@pytest.mark.slow  # the real SmolLM2 (and MiniLM)
def test_the_grounding_prefill_is_metered_and_its_gain_stored(team_a, alice, pipeline, smollm2, monkeypatch,
                                                              settings):
    from workers.rag.grounding import question_only_logprobs

    settings.PARSIMONY_QUALITY_GROUNDING = True
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    run = query_run_execute(query_run_id=query_run_start(team=team_a, user=alice, pipeline=pipeline,
                                                         question=QUESTION).pk)
    assert run.status == "succeeded" and run.answer.strip()
    prefill = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.PREFILL)
    expected = question_only_logprobs(smollm2, question=QUESTION, answer=run.answer,
                                      stopped=run.finish_reason == "stop")
    # The row is the prefill's own: its tokens (question-only prompt + answer) and measured seconds.
    assert prefill.prompt_tokens == expected.prompt_tokens and prefill.cpu_seconds > 0
    assert prefill.model_name == pipeline.model_endpoint.price_name
    alone = sum(expected.logprobs) / len(expected.logprobs)
    assert run.quality["question_only_logprob_mean"] == pytest.approx(alone, abs=2e-3)
    assert run.quality["grounding_gain"] == pytest.approx(run.quality["answer_logprob_mean"] - alone, abs=2e-3)
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
    assert run.reservation.status == "settled" and run.reservation.actual == run.cost


@pytest.mark.slow
def test_without_the_option_or_room_in_the_hold_no_grounding_prefill_runs(team_a, alice, pipeline, smollm2,
                                                                          monkeypatch, settings):
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    settings.PARSIMONY_QUALITY_GROUNDING = False
    run = query_run_execute(query_run_id=query_run_start(team=team_a, user=alice, pipeline=pipeline,
                                                         question=QUESTION).pk)
    assert run.status == "succeeded" and run.quality["grounding_gain"] is None
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.PREFILL).exists()

    settings.PARSIMONY_QUALITY_GROUNDING = True
    run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    from apps.costs.services import BudgetExceeded, holds
    from apps.rag import question_runner

    # Only the grounding prefill's bound is refused (the generation and embedding grow as usual).
    monkeypatch.setattr(question_runner, "grounding_bound", lambda **kwargs: Decimal("1000"))
    extend = holds.reservation_extend

    def refuse_large(*, reservation, amount):
        if amount >= Decimal("100"):
            raise BudgetExceeded("test: the budget is at its limit")
        return extend(reservation=reservation, amount=amount)

    monkeypatch.setattr(holds, "reservation_extend", refuse_large)
    run = query_run_execute(query_run_id=run.pk)
    assert run.status == "succeeded" and run.quality["grounding_gain"] is None
    assert run.quality["answer_logprob_mean"] is not None  # the generation itself ran as usual
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.PREFILL).exists()
