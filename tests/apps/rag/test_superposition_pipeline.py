"""The RAG pipeline with the superposition strategy: local models only, cache hits billed as cached tokens."""

from __future__ import annotations

import pytest

from apps.core.errors import ValidationFailed
from apps.costs import metering
from apps.costs.models import ModelEndpoint, Stage, UsageRecord
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.apps.rag.conftest import fake_search_hits
from tests.support.holds import refuse_hold_growth

PASSAGES = [
    ("List of Nobel laureates in Physics",
     "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany."),
    ("Paris", "Paris is the capital and most populous city of France."),
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."),
]


@pytest.fixture
def remote_endpoint(db):
    return ModelEndpoint.objects.create(
        name="remote-gpt", kind="openai", base_url="http://remote.invalid/v1", price_name="local/smollm2-135m-instruct"
    )


def test_it_rejects_superposition_on_a_remote_endpoint_at_validation(team_a, remote_endpoint):
    with pytest.raises(ValidationFailed, match="needs a local model; 'remote-gpt' is a remote endpoint"):
        pipeline_save(team=team_a, name="sp", model_endpoint=remote_endpoint, prompting_strategy="superposition")
    naive = pipeline_save(team=team_a, name="naive", model_endpoint=remote_endpoint, retriever="none")
    with pytest.raises(ValidationFailed, match="needs a local model"):
        pipeline_save(team=team_a, name="naive", model_endpoint=remote_endpoint, pipeline=naive,
                      prompting_strategy="superposition")
    local = pipeline_save(team=team_a, name="local-sp", model_endpoint="smollm2-135m-instruct",
                          prompting_strategy="superposition", retriever="none")
    assert local.prompting_strategy == "superposition"
    # Switching a superposition pipeline to a remote endpoint is refused too.
    with pytest.raises(ValidationFailed, match="needs a local model"):
        pipeline_save(team=team_a, name="local-sp", model_endpoint=remote_endpoint, pipeline=local)


@pytest.mark.slow
def test_a_superposition_query_streams_its_answer_and_bills_cached_documents(
    team_a, alice, smollm2, monkeypatch, settings, tmp_path
):
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES, first_pk=100)
    corpus = corpus_create(team=team_a, name="facts")
    pipeline = pipeline_save(team=team_a, name="sp", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             prompting_strategy="superposition", max_output_tokens=16, top_k=3)

    from apps.core.streaming import AnswerStream

    pieces: list[str] = []
    original_call = AnswerStream.__call__

    def recording(self, piece: str) -> None:
        pieces.append(piece)
        original_call(self, piece)

    monkeypatch.setattr(AnswerStream, "__call__", recording)
    runs = []
    for _ in range(2):
        run = query_run_start(team=team_a, user=alice, pipeline=pipeline,
                              question="who got the first nobel prize in physics")
        runs.append(query_run_execute(query_run_id=run.pk))
    cold, warm = runs
    assert cold.status == warm.status == "succeeded"
    assert "1901" in cold.answer and warm.answer == cold.answer
    assert "".join(pieces) == cold.answer + warm.answer and len(pieces) > 2  # streamed piece by piece
    cold_row = UsageRecord.objects.get(query_run_id=cold.pk, stage=Stage.GENERATE)
    warm_row = UsageRecord.objects.get(query_run_id=warm.pk, stage=Stage.GENERATE)
    assert cold_row.cached_tokens == 0 < warm_row.cached_tokens < warm_row.prompt_tokens == cold_row.prompt_tokens
    assert warm_row.reservation_id == warm.reservation_id and warm_row.cpu_seconds > 0
    assert warm.cached_tokens == warm_row.cached_tokens and warm.prompt_tokens == warm_row.prompt_tokens
    # The naive baseline does not depend on this run's caching or speed: the same naive prompt and the
    # same answer give the same claimed baseline, device time from the cost model (an estimate).
    def naive_generation(run):  # the baseline less the retrieval and the quality check's embedding, which
        # both paid (timed, so they vary)
        return run.baseline_cost - sum(r.cost for r in UsageRecord.objects.filter(
            query_run_id=run.pk, stage__in=[Stage.RETRIEVE, Stage.EMBED]))

    assert warm.baseline_kind == cold.baseline_kind == "estimate"
    assert naive_generation(warm) == naive_generation(cold) > 0
    assert warm.savings == warm.baseline_cost - warm.cost
    assert list((tmp_path / "kv-cache").rglob("*.safetensors"))


def test_it_validates_the_prompting_options_against_the_strategy(team_a):
    pipeline = pipeline_save(
        team=team_a,
        name="sp",
        model_endpoint="smollm2-135m-instruct",
        prompting_strategy="superposition",
        prompting_options={"top_k": 3, "answer_mode": "recompute"},
        retriever="none",
    )
    assert pipeline.prompting_options == {"top_k": 3, "answer_mode": "recompute"}
    for options, message in [
        ({"topk": 3}, "unknown options for prompting strategy 'superposition': topk"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"answer_mode": "both"}, "answer_mode must be"),
        ([3], "prompting options must be an object"),
    ]:
        with pytest.raises(ValidationFailed, match=message) as caught:
            pipeline_save(team=team_a, name="sp", model_endpoint="smollm2-135m-instruct", pipeline=pipeline,
                          prompting_options=options)
        assert "prompting_options" in caught.value.detail["fields"]
    # Naive takes no options; switching a pipeline with options to naive needs them cleared.
    with pytest.raises(ValidationFailed, match="'naive' takes no options"):
        pipeline_save(team=team_a, name="sp", model_endpoint="smollm2-135m-instruct", pipeline=pipeline,
                      prompting_strategy="naive")
    naive = pipeline_save(team=team_a, name="sp", model_endpoint="smollm2-135m-instruct", pipeline=pipeline,
                          prompting_strategy="naive", prompting_options={})
    assert naive.prompting_strategy == "naive" and naive.prompting_options == {}


@pytest.mark.slow
def test_a_pipeline_runs_superposition_with_its_own_options(team_a, alice, smollm2, monkeypatch, settings, tmp_path):
    """top_k=1 with the kept document recomputed: the answer node reads one ordinary prompt, and the
    recomputed document and question are billed as computed (not cached) tokens."""
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES, first_pk=200)
    corpus = corpus_create(team=team_a, name="facts")
    rows = {}
    for name, options in (("superposed", {"top_k": 1}), ("recompute", {"top_k": 1, "answer_mode": "recompute"})):
        pipeline = pipeline_save(team=team_a, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                                 prompting_strategy="superposition", prompting_options=options, max_output_tokens=16,
                                 top_k=3)
        for _ in range(2):  # the second run is warm
            run = query_run_execute(query_run_id=query_run_start(
                team=team_a, user=alice, pipeline=pipeline, question="who got the first nobel prize in physics").pk)
        assert run.status == "succeeded" and "1901" in run.answer, run.answer
        rows[name] = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    superposed, recompute = rows["superposed"], rows["recompute"]
    assert recompute.cached_tokens == superposed.cached_tokens > 0
    assert recompute.prompt_tokens > superposed.prompt_tokens  # the kept document and the question, again


def test_a_superposition_pipelines_decoding_options_reach_its_answer(
    team_a, alice, smollm2, monkeypatch, settings, tmp_path
):
    """The pipeline's decoding options (here a stop string) apply to the answer superposition decodes itself,
    as they do to a metered generation's: the answer that says "1901" without it ends before it."""
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES, first_pk=250)
    corpus = corpus_create(team=team_a, name="facts")
    answers = {}
    for name, decoding in (("plain", {}), ("stopped", {"stop": ["1901"]})):
        pipeline = pipeline_save(team=team_a, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                                 prompting_strategy="superposition", prompting_options={"top_k": 1},
                                 max_output_tokens=16, top_k=3, decoding_options=decoding)
        run = query_run_execute(query_run_id=query_run_start(
            team=team_a, user=alice, pipeline=pipeline, question="who got the first nobel prize in physics").pk)
        assert run.status == "succeeded", run.error
        answers[name] = (run.answer, UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE))
    (plain, plain_row), (stopped, stopped_row) = answers["plain"], answers["stopped"]
    assert "1901" in plain and "1901" not in stopped
    assert plain.startswith(stopped.strip()) and stopped_row.finish_reason == "stop"
    assert stopped_row.completion_tokens < plain_row.completion_tokens


@pytest.mark.slow
def test_a_superposition_answer_stops_where_its_hold_ends(
    team_a, alice, smollm2, monkeypatch, settings, tmp_path, caplog
):
    """The hold is enforced in the engine: a run whose reservation pays for under half of its answer's
    device time stops with finish_reason "budget", and its rows settle within the reservation."""
    import logging

    from apps.corpora.services import corpus_create
    from apps.costs.models import Reservation, ReservationStatus
    from apps.costs.pricing import money

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    fake_search_hits(monkeypatch, PASSAGES, first_pk=300)
    corpus = corpus_create(team=team_a, name="facts")
    pipeline = pipeline_save(team=team_a, name="sp", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             prompting_strategy="superposition", max_output_tokens=40, top_k=3)
    question = "describe the eiffel tower and paris in detail"

    def execute(estimate=None):
        run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=question)
        if estimate is not None:  # a smaller hold than the worst case the run reserved
            Reservation.objects.filter(pk=run.reservation_id).update(estimate=estimate)
        return query_run_execute(query_run_id=run.pk)

    execute()  # cold: fills the KV store
    full = execute()
    rows = {row.stage: row for row in UsageRecord.objects.filter(query_run_id=full.pk)}
    assert full.finish_reason in ("stop", "length") and rows[Stage.GENERATE].completion_tokens >= 8, full.answer
    hold = money(10 * rows[Stage.RETRIEVE].cost + rows[Stage.GENERATE].cost * 4 / 10)
    refused = refuse_hold_growth(monkeypatch)  # as when the budget has no room left to grow into
    with caplog.at_level(logging.WARNING, logger="apps.costs.services.ledger"):
        cut = execute(estimate=hold)
    # The engine stopped in time: the ledger's own clamp had nothing of the generation to cut.
    assert "a generate row" not in caplog.text
    assert cut.status == "succeeded" and cut.finish_reason == "budget"
    generated = UsageRecord.objects.get(query_run_id=cut.pk, stage=Stage.GENERATE)
    assert generated.finish_reason == "budget"
    assert generated.completion_tokens < rows[Stage.GENERATE].completion_tokens
    assert full.answer.startswith(cut.answer.strip())  # greedy: the same answer, cut short
    reservation = Reservation.objects.get(pk=cut.reservation_id)
    assert reservation.status == ReservationStatus.SETTLED
    assert cut.cost == reservation.actual <= reservation.estimate == hold
    assert refused  # the engine asked to grow the hold before it stopped
