"""Pipelines with a fixed context: validation, the offline prefill job, answers over the cached KV."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.costs import metering
from apps.costs.models import ModelEndpoint, Stage, UsageRecord
from apps.rag.fixed_context import (
    fixed_context_prefill_execute,
    fixed_context_prefill_start,
    fixed_context_token_estimate,
    pipeline_fixed_context_text,
)
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.support.holds import refuse_hold_growth
from tests.workers.attention.handbook import HANDBOOK, QUESTION


@pytest.fixture
def remote_endpoint(db):
    return ModelEndpoint.objects.create(
        name="remote-gpt", kind="openai", base_url="http://remote.invalid/v1", price_name="local/smollm2-135m-instruct"
    )


def test_it_validates_attention_options_and_keeps_sparse_backends_on_local_models(team_a, remote_endpoint):
    with pytest.raises(ValidationFailed, match="unknown options for attention backend 'squeezed': top_k"):
        pipeline_save(team=team_a, name="p", model_endpoint="smollm2-135m-instruct", attention_backend="squeezed",
                      attention_options={"top_k": 8})
    with pytest.raises(ValidationFailed, match="keep_fraction must be in"):
        pipeline_save(team=team_a, name="p", model_endpoint="smollm2-135m-instruct", attention_backend="squeezed",
                      attention_options={"keep_fraction": 2})
    with pytest.raises(
        ValidationFailed, match="unknown attention backend 'sparse' \\(valid: full, retrieval, squeezed\\)"
    ):
        pipeline_save(team=team_a, name="p", model_endpoint="smollm2-135m-instruct", attention_backend="sparse")
    with pytest.raises(ValidationFailed, match="needs a local model endpoint"):
        pipeline_save(team=team_a, name="p", model_endpoint=remote_endpoint, attention_backend="retrieval")
    pipeline = pipeline_save(team=team_a, name="p", model_endpoint="smollm2-135m-instruct", fixed_context=HANDBOOK,
                             attention_backend="retrieval", attention_options={"top_k": 16, "index": "hnsw"})
    assert pipeline.has_fixed_context and pipeline.attention_options == {"top_k": 16, "index": "hnsw"}
    with pytest.raises(ValidationFailed, match="needs a local model endpoint"):  # switching to a remote model
        pipeline_save(team=team_a, name="p", model_endpoint=remote_endpoint, pipeline=pipeline)


def test_a_corpus_fixed_context_is_its_documents_rebuilt_from_overlapping_chunks(team_a, team_b):
    from apps.corpora.models import Chunk, Document
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team_a, name="handbook")
    texts = {"Holidays": "Every employee receives 27 days of paid leave. Unused days expire in March.",
             "Parking": "The garage has 140 places."}
    for title, text in texts.items():
        doc = Document.objects.create(corpus=corpus, title=title, filename=f"{title}.txt", sha256=title)
        spans = [(0, 30), (20, 55), (50, len(text))] if len(text) > 55 else [(0, len(text))]
        for ordinal, (a, b) in enumerate(spans):
            Chunk.objects.create(document=doc, ordinal=ordinal, text=text[a:b], char_start=a, char_end=b)
    pipeline = pipeline_save(team=team_a, name="p", model_endpoint="smollm2-135m-instruct",
                             fixed_context_corpus=corpus)
    assert pipeline_fixed_context_text(pipeline=pipeline) == "\n\n".join(
        f"Title: {title}\n{text}" for title, text in texts.items())
    assert fixed_context_token_estimate(pipeline=pipeline) > 0
    other = corpus_create(team=team_b, name="theirs")
    with pytest.raises(ValidationFailed, match="own team's corpora"):
        pipeline_save(team=team_a, name="q", model_endpoint="smollm2-135m-instruct", fixed_context_corpus=other)


def test_only_a_local_pipeline_with_a_fixed_context_can_be_prefilled(team_a):
    plain = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", retriever="none")
    with pytest.raises(ValidationFailed, match="has no fixed context"):
        fixed_context_prefill_start(pipeline=plain)
    assert fixed_context_prefill_execute(params={"pipeline_id": 10**9}) == {"skipped": "pipeline deleted"}


@pytest.fixture
def local_model(smollm2, monkeypatch, settings, tmp_path):
    from workers.attention.fixed_context import clear_process_cache

    settings.DATA_ROOT = tmp_path
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    clear_process_cache()
    yield smollm2
    clear_process_cache()


@pytest.mark.slow
def test_the_prefill_job_reports_progress_and_a_second_run_computes_nothing(
    team_a, alice, local_model, monkeypatch, tmp_path, django_capture_on_commit_callbacks
):
    from apps.core import services as job_services
    from workers.attention.fixed_context import clear_process_cache

    reports: list[tuple[int, int, str]] = []
    original = job_services.job_progress

    def recording(*, job_id, done, total=None, message=None, **kwargs):
        reports.append((job_id, done, message))
        original(job_id=job_id, done=done, total=total, message=message, **kwargs)

    monkeypatch.setattr(job_services, "job_progress", recording)
    pipeline = pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct",
                             fixed_context=HANDBOOK, attention_backend="squeezed")
    jobs = []
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            job = fixed_context_prefill_start(pipeline=pipeline, user=alice, backends=["squeezed", "retrieval"])
        jobs.append(Job.objects.get(pk=job.pk))
        clear_process_cache()  # as if the second job ran in another worker process
    first, second = jobs
    assert first.kind == "attention.prefill" and first.queue == "gpu"
    assert first.status == second.status == "succeeded", (first.error, second.error)
    assert first.result["kv_computed"] and all(i["computed"] for i in first.result["indexes"].values())
    assert not second.result["kv_computed"] and not any(i["computed"] for i in second.result["indexes"].values())
    assert first.result["context_tokens"] > 500 and first.progress_percent == 100
    done = [d for job_id, d, _ in reports if job_id == first.pk]
    assert len(done) > 5 and done == sorted(done) and done[-1] == 1000  # in thousandths, never backwards
    assert {"prefilling the fixed context", "building the squeezed index", "building the retrieval index"} <= {
        m for job_id, _, m in reports if job_id == first.pk}
    assert list((tmp_path / "kv-cache").rglob("*.safetensors"))


@pytest.mark.slow
def test_a_question_is_answered_over_the_cached_fixed_context_and_billed_as_cached(
    team_a, alice, local_model, django_capture_on_commit_callbacks
):
    pipeline = pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct",
                             fixed_context=HANDBOOK, attention_backend="squeezed", max_output_tokens=16)
    with django_capture_on_commit_callbacks(execute=True):
        fixed_context_prefill_start(pipeline=pipeline, user=alice)
    run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    run = query_run_execute(query_run_id=run.pk)
    assert run.status == "succeeded", run.error
    assert run.answer and run.citations == []
    rows = UsageRecord.objects.filter(query_run_id=run.pk)
    assert list(rows.values_list("stage", flat=True)) == [Stage.GENERATE]  # no retrieval with a fixed context
    row = rows.get()
    assert 500 < row.cached_tokens < row.prompt_tokens < row.cached_tokens + 40  # only the question was prefilled
    assert run.cached_tokens == row.cached_tokens and run.context_tokens_after == row.cached_tokens
    # The baseline is the whole prompt with nothing cached, its device time from the cost model (an
    # estimate): whether it beats the actual depends on the calibrated throughput (docs/costs.md).
    from apps.costs.baseline import naive_generation_cost

    claimed, kind = naive_generation_cost(
        record=row, prompt_tokens=row.prompt_tokens, model="local/smollm2-135m-instruct"
    )
    assert run.baseline_kind == kind == "estimate" and run.baseline_cost == claimed
    assert run.savings == run.baseline_cost - run.cost


@pytest.mark.slow
def test_a_fixed_context_answer_stops_where_its_hold_ends(
    team_a, alice, local_model, django_capture_on_commit_callbacks, monkeypatch
):
    """The hold is enforced in the engine: a hold that pays for part of the answer cuts it short with
    finish_reason "budget"; one that pays for nothing runs nothing; both settle within their estimate."""
    from apps.costs.models import Reservation
    from apps.costs.pricing import money

    pipeline = pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct",
                             fixed_context=HANDBOOK, attention_backend="full", max_output_tokens=32)
    with django_capture_on_commit_callbacks(execute=True):
        fixed_context_prefill_start(pipeline=pipeline, user=alice)

    def execute(estimate=None):
        run = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
        if estimate is not None:  # a smaller hold than the worst case the run reserved
            Reservation.objects.filter(pk=run.reservation_id).update(estimate=estimate)
        run = query_run_execute(query_run_id=run.pk)
        assert run.status == "succeeded", run.error
        return run, UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)

    full, full_row = execute()
    assert full_row.completion_tokens >= 6, full.answer
    refused = refuse_hold_growth(monkeypatch)  # as when the budget has no room left to grow into
    cut, cut_row = execute(estimate=money(full_row.cost * 4 / 10))
    assert refused
    assert (cut.finish_reason, cut_row.finish_reason) == ("budget", "budget")
    assert cut_row.completion_tokens < full_row.completion_tokens and full.answer.startswith(cut.answer.strip())
    nothing, nothing_row = execute(estimate=Decimal(0))
    assert nothing.finish_reason == "budget" and nothing.answer == ""
    assert (nothing_row.completion_tokens, nothing_row.cpu_seconds, nothing_row.cost) == (0, 0, 0)
    for run in (cut, nothing):
        reservation = Reservation.objects.get(pk=run.reservation_id)
        assert run.cost == reservation.actual <= reservation.estimate


def test_the_command_attaches_a_fixed_context_and_a_backend(team_a, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    pipeline = pipeline_save(team=team_a, name="handbook", model_endpoint="smollm2-135m-instruct", retriever="none")
    text_file = tmp_path / "handbook.txt"
    text_file.write_text(HANDBOOK, encoding="utf-8")
    call_command("fixed_context", "handbook", team=team_a.slug, text_file=text_file, backend="retrieval",
                 option=[("top_k", 32), ("index", "hnsw")])
    pipeline.refresh_from_db()
    assert pipeline.fixed_context == HANDBOOK and pipeline.attention_backend == "retrieval"
    assert pipeline.attention_options == {"top_k": 32, "index": "hnsw"}
    with pytest.raises(CommandError, match="unknown options"):
        call_command("fixed_context", "handbook", team=team_a.slug, backend="squeezed", option=[("top_k", 3)])
    call_command("fixed_context", "handbook", team=team_a.slug, clear=True, backend="full")
    pipeline.refresh_from_db()
    assert not pipeline.has_fixed_context and pipeline.attention_options == {}
