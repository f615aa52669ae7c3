"""Bounded model work on the real SmolLM2: chunked prefill reads a prompt as one pass does, a long prompt
stops within the wall-time limit plus one chunk, and a prompt that cannot fit the context window is
refused from a byte bound without tokenizing it."""

from __future__ import annotations

import time

import pytest
import torch

from workers.runtime.decode import PrefillStopped, causal_lm_steps, chunked_prefill, decode, eos_ids, greedy
from workers.runtime.local_lm import context_window, model_context_window
from workers.runtime.meter import generate
from workers.runtime.token_count import (
    PromptTooLong,
    chat_prompt_check,
    chat_template_ids,
    chat_tokens_lower_bound,
    embedding_input,
    max_token_bytes,
)

# Chunked and one-pass prefill run different matmul shapes: fp32 sums in another order.
LOGITS_ATOL = 1e-3


def _ids(lm, n_words: int) -> list[int]:
    text = " ".join(f"word{i % 97} of the long prompt" for i in range(n_words))
    return chat_template_ids(lm.tokenizer, [{"role": "user", "content": text}])


def test_chunked_prefill_gives_the_logits_and_tokens_of_one_pass(smollm2):
    ids = _ids(smollm2, 60)  # ~400 tokens: 7 chunks of 64
    assert len(ids) > 300
    with torch.inference_mode():
        one_first, one_step = causal_lm_steps(smollm2, ids, chunk_tokens=len(ids))
        chunked_first, chunked_step = causal_lm_steps(smollm2, ids, chunk_tokens=64)
        torch.testing.assert_close(chunked_first, one_first, atol=LOGITS_ATOL, rtol=0)
        results = [
            decode(first_logits=first, step=step, tokenizer=smollm2.tokenizer, eos=eos_ids(smollm2),
                   max_new_tokens=12, deadline=float("inf"), pick=greedy)
            for first, step in ((one_first, one_step), (chunked_first, chunked_step))
        ]
    assert results[0].token_ids == results[1].token_ids


def test_chunked_prefill_fills_the_cache_with_every_prompt_token(smollm2):
    from transformers import DynamicCache

    ids = _ids(smollm2, 20)
    cache = DynamicCache(config=smollm2.model.config)
    with torch.inference_mode():
        chunked_prefill(smollm2.model, torch.tensor([ids]), cache, chunk_tokens=50)
    assert cache.get_seq_length() == len(ids)


def test_a_long_prompt_stops_within_the_wall_time_limit_plus_one_chunk(smollm2, monkeypatch):
    chunk = 128
    monkeypatch.setenv("PARSIMONY_PREFILL_CHUNK_TOKENS", str(chunk))
    ids = _ids(smollm2, 400)  # ~2,600 tokens: ~10 s on one core, unbounded
    assert len(ids) > 2000
    with torch.inference_mode():  # one chunk's time at the end of the prompt (the slowest chunk)
        from transformers import DynamicCache

        cache = DynamicCache(config=smollm2.model.config)
        chunked_prefill(smollm2.model, torch.tensor([ids[:1024]]), cache, chunk_tokens=1024)
        started = time.perf_counter()
        chunked_prefill(smollm2.model, torch.tensor([ids[1024:1024 + chunk]]), cache, past_tokens=1024)
        chunk_s = time.perf_counter() - started
    limit_s = 0.5
    messages = [{"role": "user", "content": smollm2.tokenizer.decode(ids, skip_special_tokens=True)}]
    started = time.perf_counter()
    result = generate(target=smollm2, messages=messages, max_output_tokens=50, wall_time_limit_s=limit_s)
    elapsed = time.perf_counter() - started
    assert result.finish_reason == "time_limit" and result.completion_tokens == 0 and result.text == ""
    assert 0 < result.prompt_tokens < len(ids) and result.prompt_tokens % chunk == 0
    assert "prefill passed its deadline" in (result.error or "")
    # The deadline is checked between chunks: at most one chunk (with 50% noise margin) past the limit,
    # plus the chat template before the lock.
    assert elapsed <= limit_s + 1.5 * chunk_s + 0.3, (elapsed, chunk_s)
    assert result.compute_s <= limit_s + 1.5 * chunk_s


def test_the_deadline_is_checked_between_chunks_so_the_first_always_runs(smollm2):
    ids = _ids(smollm2, 40)
    with torch.inference_mode(), pytest.raises(PrefillStopped) as stopped:
        causal_lm_steps(smollm2, ids, deadline=time.perf_counter() - 1, chunk_tokens=64)
    assert stopped.value.prefilled == 64 and stopped.value.total == len(ids) > 64
    with torch.inference_mode():  # a prompt within one chunk is read whatever the deadline, as one token is
        first, _ = causal_lm_steps(smollm2, ids[:60], deadline=time.perf_counter() - 1, chunk_tokens=64)
    assert first.shape == (smollm2.model.config.vocab_size,)


def test_the_context_window_is_the_models_config(smollm2, model_cache_dir):
    assert context_window(smollm2) == smollm2.model.config.max_position_embeddings == 8192
    assert model_context_window("smollm2-135m-instruct", cache_dir=model_cache_dir) == 8192


@pytest.mark.parametrize("text", [
    "hello " * 500, "naïve café — 東京 🙂 " * 200, "<|im_start|><|im_end|>" * 100, "a" * 5000, " " * 3000,
    "def f(x):\n    return x ** 2\n" * 100,
])
def test_the_byte_bound_never_exceeds_the_exact_count(smollm2, text):
    messages = [{"role": "user", "content": text}]
    assert chat_tokens_lower_bound(smollm2.tokenizer, messages) <= len(chat_template_ids(smollm2.tokenizer, messages))


def test_a_megabyte_prompt_is_refused_from_its_bytes_without_tokenizing(smollm2):
    assert max_token_bytes(smollm2.tokenizer) == 81  # SmolLM2's longest token (cached after the first call)
    messages = [{"role": "user", "content": "hello " * 200_000}]  # 1.2 MB, 200,000 tokens

    def never() -> int:
        raise AssertionError("a prompt that provably cannot fit must not be tokenized")

    started = time.perf_counter()
    with pytest.raises(PromptTooLong) as refused:
        chat_prompt_check(smollm2.tokenizer, messages, count=never, max_output_tokens=1, context_window=8192,
                          ceiling=32_768)
    assert time.perf_counter() - started < 0.05
    assert refused.value.limit == 8192 and refused.value.limit_name == "context_window"
    assert not refused.value.exact and refused.value.tokens > 8192
    assert "8,192" in str(refused.value) and "at least" in str(refused.value)


def test_a_prompt_near_the_limit_is_counted_exactly_and_the_output_cap_counts():
    messages = [{"role": "user", "content": "x"}]
    assert chat_prompt_check(None, messages, count=lambda: 100, max_output_tokens=92, context_window=192,
                             ceiling=None) == 100
    with pytest.raises(PromptTooLong) as refused:
        chat_prompt_check(None, messages, count=lambda: 100, max_output_tokens=93, context_window=192, ceiling=None)
    assert refused.value.exact and refused.value.tokens == 100
    with pytest.raises(PromptTooLong) as refused:
        chat_prompt_check(None, messages, count=lambda: 100, max_output_tokens=1, context_window=None, ceiling=99)
    assert refused.value.limit_name == "max_prompt_tokens" and refused.value.limit == 99


def test_embedding_inputs_are_cut_to_what_the_model_reads():
    from transformers import AutoTokenizer

    from workers.runtime.embedders import default_embedding_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_embedding_model_path(), local_files_only=True)
    text = "the quick brown fox jumps over the lazy dog " * 30_000  # 1.3 MB
    cut = embedding_input(text, 256)
    assert len(cut) == 256 * 64
    full = tokenizer(text[:200_000], truncation=True, max_length=256)["input_ids"]
    assert tokenizer(cut, truncation=True, max_length=256)["input_ids"] == full


def test_superposition_stops_between_documents_at_the_deadline(smollm2):
    from workers.prompting.base import Passage
    from workers.prompting.superposition import SuperpositionPrompting

    passages = [Passage(chunk_id=i, title=f"Doc {i}", text=f"Fact number {i} about the tower. " * 20) for i in range(4)]
    result = SuperpositionPrompting().generate(model=smollm2, system_prompt="", question="Which facts?",
                                               passages=passages, max_output_tokens=8, wall_time_limit_s=1e-6)
    assert result.finish_reason == "time_limit" and result.completion_tokens == 0
    assert "deadline" in (result.error or "") and result.prompt_tokens > 0
