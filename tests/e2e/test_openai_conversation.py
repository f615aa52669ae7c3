"""The official `openai` client and conversations: a pipeline reads the whole message list (within its history
budget) and the request's temperature / top_p / stop; closing a stream cancels its run."""

from __future__ import annotations

import time

import pytest

from apps.costs import metering
from apps.costs.models import Stage, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save
from tests.support.prompts import prompts_record
from workers.runtime.meter import EchoTarget

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPLY = "The answer is forty two and that is all there is to say about it today my friend."


@pytest.fixture
def sent(monkeypatch):
    """Every generation's messages (the echo model answers REPLY)."""
    return prompts_record(monkeypatch, reply=REPLY)


@pytest.fixture
def chat_pipeline(team_a, default_models):
    return pipeline_save(team=team_a, name="chat-qa", model_endpoint="smollm2-135m-instruct", retriever="none",
                         max_output_tokens=64)


def _run(completion_id: str) -> QueryRun:
    return QueryRun.objects.get(pk=int(completion_id.removeprefix("chatcmpl-")))


def test_a_pipeline_reads_the_earlier_messages_and_honours_stop_and_temperature(openai_client, chat_pipeline, sent):
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who wrote the handbook?"},
        {"role": "assistant", "content": "The platform team [1]."},
    ]
    completion = openai_client.chat.completions.create(
        model="chat-qa", messages=[*history, {"role": "user", "content": "When did they update it?"}],
        temperature=0.7, top_p=0.9, stop=["forty"], max_tokens=32,
    )
    answer = completion.choices[0].message.content
    assert answer.strip() == "The answer is" and "forty" not in answer  # the stop string ended it
    run = _run(completion.id)
    assert run.decoding == {"temperature": 0.7, "top_p": 0.9, "stop": ["forty"]}
    prompt = sent[-1]
    assert {"role": "user", "content": "Who wrote the handbook?"} in prompt
    assert {"role": "assistant", "content": "The platform team."} in prompt  # its old citation marker dropped
    assert "When did they update it?" in prompt[-1]["content"]
    assert run.history["turns"] == 1 and run.history["dropped_turns"] == 0
    record = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    assert completion.usage.prompt_tokens == record.prompt_tokens  # the history is billed as prompt

    # Without the history budget the same call reads the question alone.
    chat_pipeline.history_token_budget = 0
    chat_pipeline.save()
    alone = openai_client.chat.completions.create(
        model="chat-qa", messages=[*history, {"role": "user", "content": "When did they update it?"}], max_tokens=32
    )
    assert "Who wrote the handbook?" not in [m["content"] for m in sent[-1]]
    assert alone.usage.prompt_tokens < completion.usage.prompt_tokens
    assert _run(alone.id).history["dropped_turns"] == 1


def test_a_bad_stop_or_top_p_is_a_400(openai_client, chat_pipeline, sent):
    import openai

    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="chat-qa", messages=[{"role": "user", "content": "hi"}],
                                              stop=["a", "b", "c", "d", "e"])
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="chat-qa", messages=[{"role": "user", "content": "hi"}], top_p=0)


def test_closing_the_stream_cancels_the_run_and_bills_what_was_generated(openai_client, chat_pipeline, settings,
                                                                         monkeypatch):
    # Paced, on a worker thread as in production: the client reads one piece and goes away.
    settings.PARSIMONY_INPROCESS_SYNC = False
    monkeypatch.setattr(metering, "_target_override",
                        lambda endpoint: EchoTarget(name=endpoint.name, reply=REPLY, seconds_per_token=0.3))
    stream = openai_client.chat.completions.create(
        model="chat-qa", messages=[{"role": "user", "content": "Tell me"}], stream=True,
    )
    run_id = None
    for chunk in stream:
        run_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    from apps.costs.models import Reservation, ReservationStatus

    deadline = time.monotonic() + 30
    # Cancelled, and its worker stopped: the hold settled to what it billed.
    while Reservation.objects.get(pk=_run(run_id).reservation_id).status == ReservationStatus.HELD:
        assert time.monotonic() < deadline, "the run was not cancelled after its stream closed"
        time.sleep(0.1)
    run = _run(run_id)
    assert run.status == "cancelled" and run.finish_reason == "cancelled"
    record = UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)
    words = len(REPLY.split())
    assert 0 < record.completion_tokens < words  # stopped early; the echo bills one token per word it sent
    assert record.completion_tokens == len(run.answer.split())
    assert run.cost == record.cost and ledger_reconcile() == []
    from django.db import connections

    from apps.core import dispatch

    for executor in list(dispatch._executors.values()):
        executor.submit(connections.close_all).result(timeout=60)
