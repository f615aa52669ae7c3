"""Prompts that cannot fit the model's context window (with max_tokens) or the per-request ceiling are refused
with a 400 naming the limit and the tokens, before anything is reserved or enqueued, on every entry point."""

from __future__ import annotations

import time

import pytest

from apps.agents.models import AgentRun
from apps.core.models import Job
from apps.costs.models import Reservation, UsageRecord
from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = "hello " * 200_000  # 1.2 MB, 200,000 SmolLM2 tokens: the issue's prompt


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.fixture
def warm_tokenizer(default_models):
    # The web process loads the model's tokenizer once; the refusal time is measured after that.
    from apps.costs.models import ModelEndpoint
    from apps.costs.tokens import endpoint_context_window, endpoint_tokenizer
    from workers.runtime.token_count import max_token_bytes

    endpoint = ModelEndpoint.objects.get(name="smollm2-135m-instruct")
    max_token_bytes(endpoint_tokenizer(endpoint))
    endpoint_context_window(endpoint)


def _nothing_held_or_queued():
    assert not Reservation.objects.exists() and not QueryRun.objects.exists() and not Job.objects.exists()
    assert not AgentRun.objects.exists() and not UsageRecord.objects.exists()


def test_the_issues_megabyte_prompt_is_refused_in_under_a_second_in_openais_shape(
    team_a, make_api_key, api_client, echo_model, warm_tokenizer
):
    client = _client(api_client, make_api_key(team_a))
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", {
        "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": HUGE}], "max_tokens": 1,
    }, format="json")
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert "context window is 8,192 tokens" in error["message"] and "at least" in error["message"]
    assert error["parsimony"]["limit"] == 8192 and error["parsimony"]["prompt_tokens"] > 8192
    assert elapsed < 1.0, elapsed
    _nothing_held_or_queued()


def test_the_output_cap_counts_against_the_window(team_a, make_api_key, api_client, echo_model, warm_tokenizer):
    client = _client(api_client, make_api_key(team_a))
    prompt = "word " * 8_000  # ~8,030 tokens: fits 8,192 with 10 out, not with the endpoint's cap of 256
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": prompt}]}
    response = client.post("/v1/chat/completions", {**body, "max_tokens": 2000}, format="json")
    assert response.status_code == 400
    detail = response.json()["error"]["parsimony"]
    assert detail["prompt_tokens_exact"] and 8_000 <= detail["prompt_tokens"] <= 8_100
    assert detail["max_output_tokens"] == 256  # the endpoint's cap, lower than the 2,000 asked
    assert client.post("/v1/chat/completions", {**body, "max_tokens": 10}, format="json").status_code == 200


def test_a_pipeline_query_over_the_ceiling_is_refused_in_our_error_shape(
    team_a, make_api_key, api_client, echo_model, empty_pipeline, settings, warm_tokenizer
):
    settings.PARSIMONY_MAX_PROMPT_TOKENS = 300
    client = _client(api_client, make_api_key(team_a))
    response = client.post("/api/v1/queries", {"pipeline": "plain", "question": "why " * 400}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "over the per-request ceiling of 300 prompt tokens" in error["message"]
    assert error["detail"]["limit_name"] == "max_prompt_tokens" and error["detail"]["prompt_tokens"] > 300
    _nothing_held_or_queued()
    # The same pipeline through the OpenAI-compatible endpoint.
    openai = client.post("/v1/chat/completions", {
        "model": "plain", "messages": [{"role": "user", "content": "why " * 400}]}, format="json")
    assert openai.status_code == 400 and openai.json()["error"]["code"] == "context_length_exceeded"


def test_the_browser_ask_page_shows_the_refusal(
    team_a, alice, client, echo_model, empty_pipeline, settings, warm_tokenizer
):
    settings.PARSIMONY_MAX_PROMPT_TOKENS = 300
    client.force_login(alice)
    response = client.post("/ask/", {"pipeline": empty_pipeline.pk, "question": "why " * 400})
    assert response.status_code == 400
    assert "over the per-request ceiling of 300 prompt tokens" in response.content.decode()
    _nothing_held_or_queued()


def test_an_agent_run_over_the_window_is_refused_before_its_hold(team_a, alice, warm_tokenizer):
    from apps.agents.models import Agent
    from apps.agents.services import agent_run_start
    from apps.costs.models import ModelEndpoint
    from apps.costs.tokens import ContextLengthExceeded

    agent = Agent.objects.create(team=team_a, name="helper",
                                 model_endpoint=ModelEndpoint.objects.get(name="smollm2-135m-instruct"))
    with pytest.raises(ContextLengthExceeded) as refused:
        agent_run_start(team=team_a, agent=agent, request=HUGE, user=alice)
    assert refused.value.http_status == 400 and refused.value.detail["limit"] == 8192
    _nothing_held_or_queued()


def test_a_metered_call_is_checked_before_it_reserves(team_a, warm_tokenizer, echo_model):
    from apps.costs.metering import model_call
    from apps.costs.models import ModelEndpoint
    from apps.costs.services import LedgerContext
    from apps.costs.tokens import ContextLengthExceeded

    endpoint = ModelEndpoint.objects.get(name="smollm2-135m-instruct")
    with pytest.raises(ContextLengthExceeded):
        model_call(endpoint=endpoint, messages=[{"role": "user", "content": "w " * 9_000}],
                   context=LedgerContext(team=team_a), max_output_tokens=8)
    _nothing_held_or_queued()


def test_a_remote_endpoint_uses_its_configured_window(team_a, warm_tokenizer):
    from apps.costs.metering import model_call
    from apps.costs.models import ModelEndpoint
    from apps.costs.services import LedgerContext
    from apps.costs.tokens import ContextLengthExceeded

    # No tokenizer known: refused only where the bytes prove it (no token over 128 bytes assumed).
    remote = ModelEndpoint.objects.create(team=team_a, name="remote", kind="openai", base_url="http://127.0.0.1:9/v1",
                                          price_name="local/smollm2-135m-instruct", context_window=1000)
    with pytest.raises(ContextLengthExceeded) as refused:
        model_call(endpoint=remote, messages=[{"role": "user", "content": "x" * 200_000}],
                   context=LedgerContext(team=team_a), max_output_tokens=8)
    assert refused.value.detail["limit"] == 1000 and not refused.value.detail["prompt_tokens_exact"]
    _nothing_held_or_queued()


def test_embeddings_truncate_a_megabyte_input_to_what_the_model_reads(team_a, make_api_key, api_client):
    client = _client(api_client, make_api_key(team_a))
    started = time.perf_counter()
    response = client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["hello " * 200_000, "hi"]},
                           format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 256 + 3  # truncated at MiniLM's 256 tokens; "hi" is [CLS] hi [SEP]
    assert len(body["data"][0]["embedding"]) == 384
    assert time.perf_counter() - started < 30  # the encoder read 16 kB of it, not 1.2 MB
