"""Prompt token counting for reservations: tiktoken built offline, exact local counts, the byte bound."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.runtime import token_count
from workers.runtime.meter import generate
from workers.runtime.token_count import (
    TIKTOKEN_ENCODINGS,
    chat_template_ids,
    chat_tokens_bound,
    encoding_for_model,
    text_tokens,
    tiktoken_encoding,
)

# tiktoken 0.14.0's expected SHA-256 of OpenAI's published files (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

UNICODE_MESSAGES = [
    {"role": "system", "content": "Réponds en une phrase. 答えは短く。"},
    {"role": "user", "content": "¿Qué es 𝔘𝔫𝔦𝔠𝔬𝔡𝔢? Ελληνικά, русский, 中文, emoji 🤖🎉👩‍👩‍👧 and <|endoftext|>"},
]


@pytest.fixture
def fresh_tiktoken(tmp_path, monkeypatch):
    """tiktoken's files built from scratch in an empty cache folder (no network here)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(token_count, "_encodings", {})
    return tmp_path


def test_it_builds_tiktokens_files_offline_byte_for_byte(fresh_tiktoken):
    for name, (url, _ranks) in TIKTOKEN_ENCODINGS.items():
        enc = tiktoken_encoding(name)
        path = fresh_tiktoken / hashlib.sha1(url.encode()).hexdigest()  # where tiktoken.load looks
        assert hashlib.sha256(path.read_bytes()).hexdigest() == EXPECTED_SHA256[name]
        assert enc.name == name
    assert tiktoken_encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert tiktoken_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_it_maps_openai_model_names_to_their_encodings():
    assert encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_for_model("openai/gpt-4.1-nano") == "o200k_base"
    assert encoding_for_model("o3-mini") == "o200k_base"
    assert encoding_for_model("gpt-5") == "o200k_base"
    assert encoding_for_model("gpt-4-turbo") == "cl100k_base"
    assert encoding_for_model("gpt-3.5-turbo-0125") == "cl100k_base"
    assert encoding_for_model("llama-3.1-8b-instruct") is None
    assert encoding_for_model("gpt-4o-mini-but-not") == "o200k_base"  # a dated or suffixed variant
    assert encoding_for_model("o1x") is None


def test_tiktoken_chat_bound_is_at_least_the_cookbook_count(fresh_tiktoken):
    enc = tiktoken_encoding("o200k_base")
    # OpenAI's cookbook: 3 per message + every value's tokens (role, content) + 3 for the reply.
    cookbook = 3 + sum(
        3 + len(enc.encode(m["role"])) + len(enc.encode_ordinary(m["content"])) for m in UNICODE_MESSAGES
    )
    bound = chat_tokens_bound(enc, UNICODE_MESSAGES)
    assert cookbook <= bound <= cookbook + len(UNICODE_MESSAGES)
    # Special-token text in a prompt is ordinary text (tiktoken's encode would refuse it).
    assert text_tokens(enc, "<|endoftext|>") > 1


def test_local_counts_equal_the_real_models_prompt_tokens(smollm2):
    result = generate(target=smollm2, messages=UNICODE_MESSAGES, max_output_tokens=2, wall_time_limit_s=60)
    assert len(chat_template_ids(smollm2.tokenizer, UNICODE_MESSAGES)) == result.prompt_tokens
    assert chat_tokens_bound(smollm2.tokenizer, UNICODE_MESSAGES) == result.prompt_tokens


def test_the_byte_bound_holds_on_unicode_heavy_text(smollm2, fresh_tiktoken):
    o200k = tiktoken_encoding("o200k_base")
    exact = len(chat_template_ids(smollm2.tokenizer, UNICODE_MESSAGES))
    assert chat_tokens_bound(None, UNICODE_MESSAGES) >= exact
    assert chat_tokens_bound(None, UNICODE_MESSAGES) >= chat_tokens_bound(o200k, UNICODE_MESSAGES)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    system=st.text(max_size=200),
    user=st.text(max_size=400),
    history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=100)), max_size=4),
)
def test_the_byte_bound_is_never_exceeded(smollm2, fresh_tiktoken, system, user, history):
    """No tokenizer known: UTF-8 bytes + the per-message allowance bound SmolLM2's template and OpenAI's count."""
    messages = [{"role": "system", "content": system}]
    messages += [{"role": role, "content": text} for role, text in history]
    messages.append({"role": "user", "content": user})
    bound = chat_tokens_bound(None, messages)
    assert bound >= len(chat_template_ids(smollm2.tokenizer, messages))
    assert bound >= chat_tokens_bound(tiktoken_encoding("o200k_base"), messages)
    assert bound >= chat_tokens_bound(tiktoken_encoding("cl100k_base"), messages)
    for _, text in history:
        assert text_tokens(None, text) >= text_tokens(smollm2.tokenizer, text)


@pytest.mark.slow
def test_the_tokenizer_alone_loads_from_the_gguf_without_the_weights(smollm2, tmp_path, monkeypatch):
    """An empty cache folder (nothing converted, no model loaded): the same counts, read from the GGUF's metadata."""
    from workers.runtime import local_lm

    monkeypatch.setattr(local_lm, "_cache", {})
    monkeypatch.setattr(local_lm, "_tokenizers", {})
    tokenizer = local_lm.load_tokenizer(local_lm.SMOLLM2_ALIAS, cache_dir=tmp_path)
    assert not (tmp_path / "models").exists()  # no conversion happened
    assert chat_template_ids(tokenizer, UNICODE_MESSAGES) == chat_template_ids(smollm2.tokenizer, UNICODE_MESSAGES)
