"""The fast forward (preallocated KV cache, plain llama forward) against transformers' forward on the real
SmolLM2: the same greedy tokens in fp32, chunked prefill as one pass, the other dtypes measured by the
agreement helper, and the meter's text the same on both paths."""

from __future__ import annotations

import pytest
import torch

from workers.runtime.decode import causal_lm_steps
from workers.runtime.fast_lm import (
    FastLM,
    UnsupportedModel,
    fast_lm,
    greedy_tokens,
    resolve_dtype,
    token_agreement,
)
from workers.runtime.meter import generate
from workers.runtime.token_count import chat_template_ids

QUESTIONS = [
    "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Röntgen. Who got the first physics Nobel?",
    "Write one sentence about the sea.",
    "List three colours.",
]


def _prompts(lm) -> list[list[int]]:
    return [chat_template_ids(lm.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_it_gives_the_reference_greedy_tokens_in_fp32(smollm2):
    fast = FastLM(smollm2.model, dtype="fp32")
    with torch.inference_mode():
        for ids in _prompts(smollm2):
            reference = greedy_tokens(*causal_lm_steps(smollm2, ids), 16)
            first, step = fast.steps(ids, max_new_tokens=4)  # a small cache: it must grow past its capacity
            ref_first, _ = causal_lm_steps(smollm2, ids)
            torch.testing.assert_close(first, ref_first.float(), atol=1e-3, rtol=0)
            assert greedy_tokens(first, step, 16) == reference


def test_its_chunked_prefill_reads_the_prompt_as_one_pass_does(smollm2):
    fast = FastLM(smollm2.model, dtype="fp32")
    ids = _prompts(smollm2)[0]
    with torch.inference_mode():
        one_first, one_step = fast.steps(ids, chunk_tokens=len(ids))
        chunked_first, chunked_step = fast.steps(ids, chunk_tokens=7)
        torch.testing.assert_close(chunked_first, one_first, atol=1e-3, rtol=0)
        assert greedy_tokens(chunked_first, chunked_step, 10) == greedy_tokens(one_first, one_step, 10)


def test_bf16_weights_run_and_their_agreement_is_measured(smollm2):
    ids = _prompts(smollm2)[:2]
    fast = FastLM(smollm2.model, dtype="bf16")
    with torch.inference_mode():
        reference = [greedy_tokens(*causal_lm_steps(smollm2, p), 8) for p in ids]
        other = [greedy_tokens(*fast.steps(p), 8) for p in ids]
    agreement = token_agreement(reference, other)
    assert 0.0 <= agreement <= 1.0
    assert all(len(o) == 8 for o in other)


def test_token_agreement_counts_the_tokens_before_the_first_difference():
    assert token_agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 4], [5, 6]]) == pytest.approx(3 / 6)
    assert token_agreement([[1, 2]], [[1]]) == 0.5
    with pytest.raises(ValueError, match="2 reference sequences but 1"):
        token_agreement([[1], [2]], [[1]])


def test_the_dtype_setting_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("PARSIMONY_LOCAL_LM_DTYPE", raising=False)
    assert resolve_dtype("cpu") == "fp32" and resolve_dtype("cuda") == "bf16"
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "int8")
    assert resolve_dtype("cpu") == "int8"
    with pytest.raises(ValueError, match="CPUs only"):
        resolve_dtype("cuda:0")
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp8")
    with pytest.raises(ValueError, match="auto, fp32, bf16, int8"):
        resolve_dtype("cpu")


def test_it_refuses_a_model_that_is_not_a_llama(smollm2):
    class NotLlama:
        config = type("C", (), {"model_type": "gpt2"})()

    with pytest.raises(UnsupportedModel, match="gpt2"):
        FastLM(NotLlama(), dtype="fp32")
    assert fast_lm(smollm2, "fp32") is fast_lm(smollm2, "fp32")  # built once per model and dtype


def test_the_meter_gives_the_same_text_and_stream_on_the_fast_path_as_on_the_reference(smollm2, monkeypatch):
    messages = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("PARSIMONY_FAST_DECODE", flag)
        pieces: list[str] = []
        result = generate(target=smollm2, messages=messages, max_output_tokens=24, wall_time_limit_s=120,
                          on_token=pieces.append, stop=["seven"])
        assert "".join(pieces) == result.text
        results[flag] = result
    assert results["1"].text == results["0"].text
    assert results["1"].completion_tokens == results["0"].completion_tokens
    assert results["1"].finish_reason == results["0"].finish_reason
    assert results["1"].compute_s > 0
