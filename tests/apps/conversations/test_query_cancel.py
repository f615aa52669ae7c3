"""Stop: a run cancelled mid-generation with the real local model stops before its next token, bills exactly
the tokens it generated, settles its hold to them and reads "cancelled"; the ledger reconciles."""

from __future__ import annotations

import time

import pytest

from apps.costs import metering
from apps.costs.models import Reservation, ReservationStatus, Stage, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save, query_run_cancel, query_run_start

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CAP = 400


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def counting_pipeline(team_a, settings, monkeypatch, smollm2, default_models):
    # On a worker thread, as `make run` runs jobs: the test is free to press Stop while it generates.
    settings.PARSIMONY_INPROCESS_SYNC = False
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: smollm2)
    yield pipeline_save(team=team_a, name="counter", model_endpoint="smollm2-135m-instruct", retriever="none",
                        max_output_tokens=CAP, decoding_options={"repetition_guard": False})
    _close_job_threads_connections()


def _close_job_threads_connections() -> None:
    # The job threads keep their database connections: close them on their own threads.
    from django.db import connections

    from apps.core import dispatch

    for executor in list(dispatch._executors.values()):
        executor.submit(connections.close_all).result(timeout=60)


@pytest.fixture
def job_threads(settings):
    """Jobs run on worker threads, as `make run` runs them (the test presses Stop meanwhile)."""
    settings.PARSIMONY_INPROCESS_SYNC = False
    yield
    _close_job_threads_connections()


def test_stop_mid_generation_bills_exactly_the_tokens_generated(team_a, alice, counting_pipeline, smollm2):
    run = query_run_start(team=team_a, pipeline=counting_pipeline, user=alice,
                          question="Count from 1 to 300, one number per line.")
    _wait(lambda: len(QueryRun.objects.get(pk=run.pk).answer) >= 10, 300, "the answer to start streaming")
    assert query_run_cancel(run=run, wait_s=60) is True  # returns once the worker has settled the hold
    run = QueryRun.objects.get(pk=run.pk)

    assert run.status == "cancelled" and run.finish_reason == "cancelled", (run.status, run.error)
    generation = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    assert 0 < generation.completion_tokens < CAP
    assert run.completion_tokens == generation.completion_tokens
    # The tokens billed are the tokens generated: the stopped answer's text re-encodes to them (±1 for a
    # piece held back at a token boundary).
    encoded = len(smollm2.tokenizer.encode(run.answer, add_special_tokens=False))
    assert abs(encoded - generation.completion_tokens) <= 1, (encoded, generation.completion_tokens, run.answer)
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk)) > 0
    reservation = Reservation.objects.get(pk=run.reservation_id)
    assert reservation.status == ReservationStatus.SETTLED
    assert not UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.EMBED).exists()  # no quality check
    assert run.job.status == "cancelled"
    assert query_run_cancel(run=run) is False  # finished: nothing to stop
    assert ledger_reconcile() == []


def test_stop_mid_stream_from_a_remote_endpoint_bills_the_text_it_sent(team_a, alice, job_threads, loopback_endpoints):
    """A remote endpoint's stream stopped by the user: reading stops, the run is cancelled, and the tokens the
    endpoint sent (counted with its tokenizer: the stream carries no usage when cut) are billed at its price;
    the hold settles to them and the ledger reconciles."""
    import tempfile
    from decimal import Decimal
    from pathlib import Path

    from apps.costs.services import price_set
    from apps.costs.services.endpoints import endpoint_save
    from tests.support.fake_openai import FakeOpenAIServer
    from workers.runtime.token_count import tiktoken_encoding

    price_set(model_name="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))
    reply = " ".join(str(n) for n in range(1, 301))
    with FakeOpenAIServer(reply=reply, chunk_delay_s=0.05, tokens_per_chunk=2) as server:
        endpoint_save(team=team_a, name="remote", base_url=server.base_url, model="gpt-4o-mini", api_key="sk-x",
                      price_name="gpt-4o-mini", context_window=16_000, max_output_tokens=CAP)
        pipeline = pipeline_save(team=team_a, name="remote", model_endpoint="remote", retriever="none",
                                 max_output_tokens=CAP)
        run = query_run_start(team=team_a, pipeline=pipeline, user=alice, question="Count to 300.")
        _wait(lambda: len(QueryRun.objects.get(pk=run.pk).answer) >= 10, 60, "the answer to start streaming")
        assert query_run_cancel(run=run, wait_s=60) is True
    run = QueryRun.objects.get(pk=run.pk)
    assert run.status == "cancelled" and run.finish_reason == "cancelled", (run.status, run.error)
    generation = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    full = len(reply.split())  # one o200k token a number and its space, about
    assert 0 < generation.completion_tokens < full and reply.startswith(run.answer.strip())
    encoding = tiktoken_encoding("o200k_base", cache_dir=Path(tempfile.gettempdir()) / "parsimony-test-tiktoken")
    assert abs(len(encoding.encode_ordinary(run.answer)) - generation.completion_tokens) <= 2
    assert generation.price_output_per_mtok == Decimal("0.60") and generation.cost > 0
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk))
    assert Reservation.objects.get(pk=run.reservation_id).status == ReservationStatus.SETTLED
    assert server.requests == 1
    assert ledger_reconcile() == []
