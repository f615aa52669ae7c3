"""Compression inside the RAG pipeline: the method runs on the pipeline's model, its cost is its own ledger stage."""

from __future__ import annotations

import pytest

from apps.costs import metering
from apps.costs.models import Stage, UsageRecord
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.apps.rag.conftest import fake_search_hits
from workers.compression.base import CompressedContext
from workers.runtime.meter import EchoTarget

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

        def compress(self, *, query, passages, target, count_tokens):
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


def _reserved(team, user, method: str):
    run = query_run_start(team=team, user=user, pipeline=_pipeline(team, method, 0.5),
                          question="When was the Eiffel Tower completed?")
    return run.reservation.estimate


def test_a_model_driven_compression_reserves_its_own_worst_case(team_a, alice):
    reserved = {method: _reserved(team_a, alice, method)
                for method in ("none", "extractive", "semantic_prune", "summarize", "surprisal_prune")}
    # Embedding-only methods add a bound on their embedding seconds (the cost model's MiniLM speed:
    # semantic_prune embeds a variant per word); model methods also their model work.
    # These corpora are empty: the passages' bound is 0 tokens, so semantic_prune's per-word variants add nothing.
    assert reserved["none"] < reserved["extractive"] <= reserved["semantic_prune"]
    assert reserved["summarize"] > reserved["extractive"]
    assert reserved["surprisal_prune"] > reserved["extractive"]


def test_semantic_prunes_bound_grows_with_the_passages_it_embeds_a_variant_of_per_word(db):
    from apps.costs.services import price_current
    from apps.rag.services import _compression_worst_case

    price = price_current(model_name="local/smollm2-135m-instruct")
    bound = {method: _compression_worst_case(method=method, price=price, top_k=5, chunk_tokens=256, question_tokens=8)
             for method in ("extractive", "semantic_prune")}
    assert bound["extractive"] < bound["semantic_prune"]


def test_a_slow_summarize_is_settled_within_the_reservation(team_a, alice, hits, monkeypatch, settings, tmp_path):
    from workers import compression

    class SlowSummaries:
        """Every chunk summarized by a call that ran to the summarizer's time limit (60 s), full size out."""

        name = "summarize"

        def __init__(self, *, resources=None, **params):
            self.resources = resources

        def compress(self, *, query, passages, target, count_tokens):
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
    # The patched retrieval returns passages its (empty) corpus never held, so they are far past the
    # bound the run reserved for the stage: the seconds past it are not billed (settlement <= hold).
    assert 0 <= float(compress.cpu_seconds) < 120.0
    run.reservation.refresh_from_db()
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
    assert run.cost <= run.reservation.estimate
