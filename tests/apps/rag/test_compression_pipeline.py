"""Compression inside the RAG pipeline: the method runs on the pipeline's model, its cost is its own ledger stage."""

from __future__ import annotations

import pytest

from apps.costs import metering
from apps.costs.models import Stage, UsageRecord
from apps.costs.services import BudgetExceeded
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.apps.rag.conftest import fake_search_hits
from tests.support.holds import refuse_hold_growth
from workers.compression.base import CompressedContext
from workers.compression.plan import CompressionPlan, ModelCall
from workers.runtime.meter import EchoTarget

ENDPOINT = "smollm2-135m-instruct"
PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the "
                     "World's Fair and is 330 metres tall. It was designed by the company of Gustave Eiffel."),
    ("Paris", "Paris is the capital and most populous city of France. It hosted the Olympics in 1900 and 1924."),
]


@pytest.fixture
def hits(monkeypatch):
    return fake_search_hits(monkeypatch, PASSAGES)


def _pipeline(team, method: str, target: float):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team, name=f"facts-{method}")
    return pipeline_save(team=team, name=f"p-{method}", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         compression_method=method, compression_target=target, max_output_tokens=16)


def test_a_summarizing_pipeline_bills_the_summaries_as_a_compress_stage(team_a, alice, hits, monkeypatch, settings,
                                                                          tmp_path):
    settings.DATA_ROOT = tmp_path
    # The echo double "summarizes" every chunk as its reply and answers with it too.
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="in 1889"))
    pipeline = _pipeline(team_a, "summarize", 0.5)
    run = query_run_execute(query_run_id=query_run_start(team=team_a, user=alice, pipeline=pipeline,
                                                         question="When was the Eiffel Tower completed?").pk)
    assert run.status == "succeeded"
    # Most of the half-budget goes to the Eiffel chunk (relevance allocation), summarized as "in 1889".
    assert 2 <= run.context_tokens_after <= run.context_tokens_before // 2
    row = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.COMPRESS)
    assert row.prompt_tokens > len(PASSAGES[0][1].split())  # the chunk was read, with the instruction
    assert row.completion_tokens >= 2 and row.completion_tokens % 2 == 0  # "in 1889" per summarized chunk
    # The generation read the summaries, not the chunks.
    generate = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    assert generate.prompt_tokens < run.context_tokens_before
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))


def test_a_helper_models_tokens_are_billed_as_cpu_time_not_at_the_endpoints_price(team_a, alice, hits, monkeypatch,
                                                                                   settings, tmp_path):
    from workers import compression

    class HelperModelMethod:
        """A method whose model work ran on another (local helper) model than the endpoint's."""

        name = "helper"

        def __init__(self, *, resources=None):
            self.resources = resources

        def plan(self, *, query, passages, target, count_tokens):
            return CompressionPlan(method=self.name, scorer="some-local-scorer", scorer_passes=1, scorer_tokens=500)

        def compress(self, *, query, passages, target, count_tokens, plan=None):
            tokens = sum(count_tokens(p.text) for p in passages)
            return CompressedContext(passages=passages[:1], tokens_before=tokens, tokens_after=count_tokens(
                passages[0].text), compute_s=0.25, model_prompt_tokens=500, model="some-local-scorer")

    settings.DATA_ROOT = tmp_path
    monkeypatch.setitem(compression.METHODS, "helper", HelperModelMethod)
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="1889"))
    pipeline = _pipeline(team_a, "helper", 0.5)
    run = query_run_execute(query_run_id=query_run_start(team=team_a, user=alice, pipeline=pipeline,
                                                         question="When?").pk)
    row = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.COMPRESS)
    assert (row.prompt_tokens, row.completion_tokens) == (0, 0)
    assert float(row.cpu_seconds) == pytest.approx(0.25)


def _spy_on_the_stage(monkeypatch) -> dict:
    """What the compress stage's hold saw: the plan, the hold before and after it grew, the stage's bound."""
    from apps.rag import compression_hold

    seen: dict = {}
    planned = compression_hold.CompressionHold.planned

    def spy(self, plan):
        seen.update(plan=plan, before=self.hold.reservation.estimate, spent=self.hold.spent())
        hook = planned(self, plan)
        seen.update(after=self.hold.reservation.estimate, bound=self.bound)
        return hook

    monkeypatch.setattr(compression_hold.CompressionHold, "planned", spy)
    return seen


def test_the_compress_stage_grows_the_hold_by_its_plan_before_it_runs(team_a, alice, hits, monkeypatch, settings,
                                                                      tmp_path):
    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="1889"))
    seen = _spy_on_the_stage(monkeypatch)
    run = query_run_start(team=team_a, user=alice, pipeline=_pipeline(team_a, "extractive", 0.5),
                          question="When was the Eiffel Tower completed?")
    run = query_run_execute(query_run_id=run.pk)
    assert run.status == "succeeded", run.error
    # extractive embeds every sentence and the question once: its plan counts them exactly.
    plan = seen["plan"]
    assert plan.exact and plan.embed_calls >= 1 and plan.embed_tokens > 0 and not plan.model_calls
    # Before the stage ran, the hold covered what was spent (retrieval) plus the stage's bound.
    assert seen["bound"] > 0 and seen["after"] >= seen["spent"] + seen["bound"]
    compress = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.COMPRESS)
    assert 0 < compress.cost <= seen["bound"]
    run.reservation.refresh_from_db()
    assert run.cost == run.reservation.actual <= run.reservation.estimate


def test_a_compress_stage_the_budget_cannot_grow_into_stops_the_run_before_it_runs(
    team_a, alice, hits, monkeypatch, settings, tmp_path
):
    from apps.costs.models import Reservation

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="1889"))
    run = query_run_start(team=team_a, user=alice, pipeline=_pipeline(team_a, "semantic_prune", 0.5),
                          question="When was the Eiffel Tower completed?")
    Reservation.objects.filter(pk=run.reservation_id).update(estimate=0)  # a hold with no room left
    refused = refuse_hold_growth(monkeypatch)
    with pytest.raises(BudgetExceeded):
        query_run_execute(query_run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "grow" in run.error and refused
    # Nothing of the stage or the generation ran.
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage__in=[Stage.COMPRESS, Stage.GENERATE]).exists()


def test_a_slow_summarize_is_settled_within_the_reservation(team_a, alice, hits, monkeypatch, settings, tmp_path):
    from workers import compression

    class SlowSummaries:
        """Every chunk summarized by a call that ran to the summarizer's time limit (60 s), full size out."""

        name = "summarize"

        def __init__(self, *, resources=None, **params):
            self.resources = resources

        def plan(self, *, query, passages, target, count_tokens):
            # One 40-token summary call per chunk; the run below is far slower than its bound.
            sizes = [count_tokens(p.text) for p in passages]
            return CompressionPlan(method=self.name, model=ENDPOINT,
                                   model_calls=[ModelCall(size + 100, 40) for size in sizes])

        def compress(self, *, query, passages, target, count_tokens, plan=None):
            for call in plan.model_calls:  # each call grows the hold before it runs
                plan.on_model_call(call)
            sizes = [count_tokens(p.text) for p in passages]
            return CompressedContext(
                passages=passages, tokens_before=sum(sizes), tokens_after=sum(sizes), compute_s=60.0 * len(passages),
                model_prompt_tokens=sum(sizes) + 100 * len(passages), model_completion_tokens=sum(sizes),
            )

    settings.DATA_ROOT = tmp_path
    # A short generation cap: before the compress stage had its own bound, the reservation
    # (sized on the generation's wall time) was smaller than two 60 s summary calls.
    settings.PARSIMONY_MODEL_WALL_TIME_S = 10.0
    monkeypatch.setitem(compression.METHODS, "summarize", SlowSummaries)
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="1889"))
    start = query_run_start(team=team_a, user=alice, pipeline=_pipeline(team_a, "summarize", 0.5),
                            question="When was the Eiffel Tower completed?")
    run = query_run_execute(query_run_id=start.pk)
    assert run.status == "succeeded"
    compress = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.COMPRESS)
    # 120 s of summaries against a bound of two 140-token prompts and 40-token summaries: the seconds
    # past the bound the stage grew the hold by are not billed (settlement <= hold).
    assert 0 <= float(compress.cpu_seconds) < 120.0
    run.reservation.refresh_from_db()
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
    assert run.cost <= run.reservation.estimate
