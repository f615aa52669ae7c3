"""The official `openai` client against a live Parsimony server: stream and non-stream, usage = ledger."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from apps.costs import metering
from apps.costs.models import Stage, UsageRecord
from apps.costs.services import budget_save
from apps.rag.models import QueryRun
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_model(monkeypatch):
    monkeypatch.setattr(
        metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="The answer is forty two.")
    )


def _generation_ledger(run_id: int) -> UsageRecord:
    return UsageRecord.objects.get(query_run_id=run_id, stage=Stage.GENERATE)


def test_non_stream_usage_equals_the_ledger(openai_client, echo_model):
    completion = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is six times seven?"}],
        max_tokens=16,
    )
    assert completion.choices[0].message.content == "The answer is forty two."
    assert completion.choices[0].finish_reason == "stop"
    run = QueryRun.objects.get(pk=int(completion.id.removeprefix("chatcmpl-")))
    record = _generation_ledger(run.pk)
    assert completion.usage.prompt_tokens == record.prompt_tokens == 7  # echo counts words of every message
    assert completion.usage.completion_tokens == record.completion_tokens == 5
    assert completion.usage.total_tokens == 12


def test_non_stream_response_headers_carry_cost_and_savings(live_key, echo_model):
    key, base_url = live_key
    raw = openai.OpenAI(
        api_key=key.raw_key, base_url=base_url, max_retries=0
    ).chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hello"}]
    )
    run = QueryRun.objects.get(pk=int(raw.headers["x-parsimony-query-run"]))
    assert Decimal(raw.headers["x-parsimony-cost"]) == run.cost == _generation_ledger(run.pk).cost
    assert Decimal(raw.headers["x-parsimony-savings"]) == run.savings
    assert Decimal(raw.headers["x-parsimony-baseline-cost"]) == run.baseline_cost


@pytest.fixture
def slow_echo_model(monkeypatch, settings):
    # 0.3 s per word: the answer is written to the row in several flushes (every 0.15 s) and the SSE
    # view polls every 0.05 s, so a working stream delivers it in several chunks. The run goes to a
    # worker thread as in production (run inline, it would finish before the response starts).
    settings.PARSIMONY_INPROCESS_SYNC = False
    monkeypatch.setattr(
        metering,
        "_target_override",
        lambda endpoint: EchoTarget(name=endpoint.name, reply="The answer is forty two.", seconds_per_token=0.3),
    )


def test_stream_delivers_the_answer_and_usage_equal_to_the_ledger(openai_client, slow_echo_model):
    stream = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Tell me the answer"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
            run_id = int(chunk.id.removeprefix("chatcmpl-"))
    assert "".join(pieces) == "The answer is forty two."
    # Streamed, not delivered at the end: the answer arrived in more than one content chunk.
    assert len([piece for piece in pieces if piece]) > 1, pieces
    assert finish == "stop"
    record = _generation_ledger(run_id)
    assert (usage.prompt_tokens, usage.completion_tokens) == (record.prompt_tokens, record.completion_tokens)


def test_an_exhausted_budget_is_a_402_in_openais_error_shape(openai_client, echo_model, team_a):
    budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 402
    error = raised.value.body
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "the month budget of team 'Team A' would be exceeded" in error["message"]
    assert not QueryRun.objects.exists()


def test_an_unknown_model_is_a_404_model_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["code"] == "model_not_found"


def test_a_bad_key_is_refused(live_key):
    _, base_url = live_key
    client = openai.OpenAI(api_key="psk_nope_nope", base_url=base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_models_lists_pipelines_and_endpoints(openai_client, team_a):
    from apps.rag.services import pipeline_save

    pipeline_save(team=team_a, name="handbook-qa", model_endpoint="smollm2-135m-instruct", corpora=[], retriever="none")
    ids = {model.id for model in openai_client.models.list()}
    assert {"handbook-qa", "smollm2-135m-instruct", "all-MiniLM-L6-v2"} <= ids


@pytest.mark.slow
def test_the_real_local_model_round_trips_through_the_official_client(openai_client, settings, tmp_path):
    import os

    settings.DATA_ROOT = os.environ.get("PARSIMONY_TEST_MODEL_CACHE") or tmp_path
    completion = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=12,
    )
    run = QueryRun.objects.get(pk=int(completion.id.removeprefix("chatcmpl-")))
    record = _generation_ledger(run.pk)
    assert "paris" in completion.choices[0].message.content.lower()
    assert completion.usage.prompt_tokens == record.prompt_tokens > 20
    assert completion.usage.completion_tokens == record.completion_tokens <= 12
    assert record.cost > 0 and record.cpu_seconds > 0


@pytest.mark.slow
def test_embeddings_through_the_official_client_are_normalised_and_metered(openai_client):
    result = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat sat", "a dog ran"])
    assert [len(item.embedding) for item in result.data] == [384, 384]
    norm = sum(x * x for x in result.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-3
    record = UsageRecord.objects.get(stage=Stage.EMBED)
    assert result.usage.prompt_tokens == record.prompt_tokens > 0


def test_the_raw_http_error_body_names_the_budget(live_key, echo_model, team_a):
    key, base_url = live_key
    budget_save(team=team_a, hard_limit=Decimal("0"), period="day")
    response = httpx.post(
        f"{base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key.raw_key}"},
        json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 402
    detail = response.json()["error"]["parsimony"]
    assert detail["limit"] == "0E-10" or Decimal(detail["limit"]) == 0
    assert Decimal(detail["estimate"]) > 0
