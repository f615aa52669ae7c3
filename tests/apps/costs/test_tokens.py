"""What counts an endpoint's prompt tokens for its reservations, and that the count is the bill's (or bounds it)."""

from __future__ import annotations

import pytest

from apps.costs.metering import model_call
from apps.costs.models import ModelEndpoint
from apps.costs.tokens import prompt_tokens_bound, text_tokens_bound, tokenizer_kind
from apps.rag.fixed_context import fixed_context_token_estimate

MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Quelle est la capitale de la France ? 东京は日本の首都です。"},
]


def _remote(**fields) -> ModelEndpoint:
    values = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "price_name": "test/remote", **fields}
    return ModelEndpoint(name=fields.get("remote_model") or "remote", **values)


@pytest.fixture
def local_endpoint(db, settings, model_cache_dir, smollm2):
    settings.DATA_ROOT = model_cache_dir
    return ModelEndpoint.objects.get(name="smollm2-135m-instruct")  # seeded by migration 0002


def test_each_endpoint_kind_gets_its_counter(db, model_cache_dir):
    assert tokenizer_kind(ModelEndpoint(kind="local", source="smollm2-135m-instruct")) == "local"
    assert tokenizer_kind(_remote(remote_model="gpt-4o-mini")) == "tiktoken"
    assert tokenizer_kind(_remote(remote_model="", price_name="openai/gpt-4.1")) == "tiktoken"
    assert tokenizer_kind(_remote(remote_model="gpt-4o", tokenizer=str(model_cache_dir))) == "hf"
    assert tokenizer_kind(_remote(remote_model="mistral-small", price_name="mistral/small")) == "bytes"


def test_local_bound_equals_the_real_models_prompt_tokens(local_endpoint, ctx):
    call = model_call(endpoint=local_endpoint, messages=MESSAGES, context=ctx, max_output_tokens=2)
    assert prompt_tokens_bound(local_endpoint, MESSAGES) == call.record.prompt_tokens
    assert text_tokens_bound(local_endpoint, "hello world") == 2


def test_openai_models_are_counted_with_tiktoken_offline(db):
    gpt4o = _remote(remote_model="gpt-4o-mini")
    assert text_tokens_bound(gpt4o, "hello world") == 2  # [24912, 2375] in o200k_base
    gpt35 = _remote(remote_model="gpt-3.5-turbo")
    assert text_tokens_bound(gpt35, "hello world") == 2  # [15339, 1917] in cl100k_base
    # One message: "hello world" (2) + role "user" (1) + 4 framing + 3 reply priming.
    assert prompt_tokens_bound(gpt4o, [{"role": "user", "content": "hello world"}]) == 10


def test_a_named_tokenizer_counts_a_remote_endpoints_prompt(db, model_cache_dir, smollm2):
    from workers.runtime.local_lm import converted_dir_for, smollm2_gguf_path

    folder = converted_dir_for(smollm2_gguf_path(), model_cache_dir)  # a tokenizer folder on disk
    remote = _remote(remote_model="smollm2-served", tokenizer=str(folder))
    expected = smollm2.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
    assert prompt_tokens_bound(remote, MESSAGES) == len(expected)


def test_without_a_tokenizer_the_bound_is_utf8_bytes(db, smollm2):
    unknown = _remote(remote_model="mystery-model", price_name="mystery")
    text = MESSAGES[1]["content"]
    assert text_tokens_bound(unknown, text) == len(text.encode("utf-8")) > len(text)
    exact = len(smollm2.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
    assert prompt_tokens_bound(unknown, MESSAGES) >= exact


def test_fixed_context_is_counted_in_the_generators_tokens(local_endpoint, smollm2, team_a):
    from apps.rag.models import Pipeline

    context = "Das Fixe: 固定されたコンテキスト. " * 20
    pipeline = Pipeline(team=team_a, name="fixed", model_endpoint=local_endpoint, fixed_context=context)
    exact = len(smollm2.tokenizer.encode(context, add_special_tokens=False))
    assert exact <= fixed_context_token_estimate(pipeline=pipeline) <= exact + 8
