"""The fast forward (preallocated KV cache, plain llama forward) against transformers' forward on the real
SmolLM2: the same greedy tokens in fp32, chunked prefill as one pass, the other dtypes measured by the
agreement helper, and the meter's text the same on both paths."""

from __future__ import annotations

import pytest
import torch

from workers.runtime.decode import causal_lm_steps
from workers.runtime.fast_lm import (
    DEFAULT_CLOSE_CALL,
    FastLM,
    Int4WeightLinear,
    Int8WeightLinear,
    UnsupportedModel,
    close_call_margin,
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
    assert resolve_dtype("cpu") == "int4-weight" and resolve_dtype("cuda") == "bf16"  # the measured defaults
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "auto")
    assert resolve_dtype("cpu") == "int4-weight"
    for name in ("int8", "int8-weight", "fp32"):
        monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", name)
        assert resolve_dtype("cpu") == name
    for name in ("int8", "int8-weight", "int4-weight"):
        monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", name)
        with pytest.raises(ValueError, match="CPUs only"):
            resolve_dtype("cuda:0")
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp8")
    with pytest.raises(ValueError, match="auto, fp32, bf16, int8, int8-weight, int4-weight"):
        resolve_dtype("cpu")


def _q4_1_like(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    """Weights as a GGUF Q4_1 tensor dequantizes: per block of 32 inputs, d * q + m with q in 0..15 (both ends
    used) and d, m fp16 numbers."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_f, in_f // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(out_f, in_f // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-(torch.rand(out_f, in_f // 32, 1, generator=g) * 0.1)).half().float()
    return (d * q + m).view(out_f, in_f)


def test_int8_weight_linear_matches_fp32_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 64, generator=g) * 0.05
    x = torch.randn(3, 5, 64, generator=g)
    lin = Int8WeightLinear(w)
    assert lin.q.dtype == torch.int8 and lin.q.shape == (96, 64) and lin.scales.shape == (96,)
    # The dequantized weights are within half a step of the originals (one step = max |w| of the row / 127).
    step = w.abs().amax(1, keepdim=True) / 127
    assert bool(((lin.dequantized() - w).abs() <= step * 0.51).all())
    y = lin(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 96)
    reference = torch.nn.functional.linear(x, w)
    # bf16 input and output cost ~2^-8 relative, the int8 grid a little more.
    torch.testing.assert_close(y, reference, atol=0.03 * float(reference.abs().max()), rtol=0.02)
    assert not torch.equal(y, reference)  # it really is the quantized product


def test_int4_weight_linear_holds_q4_1_blocks_and_matches_fp32():
    w = _q4_1_like(64, 128)
    lin = Int4WeightLinear(w, group=32, keep_grid=True)
    # The 4-bit grid is the blocks' own: only d and m are rounded to bf16 (2^-9 relative).
    torch.testing.assert_close(lin.dequantized(), w, atol=float(w.abs().max()) * 2**-7, rtol=0)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2))
    reference = torch.nn.functional.linear(x, w)
    torch.testing.assert_close(lin(x), reference, atol=0.02 * float(reference.abs().max()), rtol=0.02)
    with pytest.raises(ValueError, match="groups of 32 do not divide 48"):
        Int4WeightLinear(torch.randn(8, 48))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int4-weight", "int8-weight"])
def test_weight_only_dtypes_follow_the_fp32_greedy_tokens(smollm2, dtype, monkeypatch):
    prompts = _prompts(smollm2)
    reference_lm = FastLM(smollm2.model, dtype="fp32")
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_CLOSE_CALL", "0")  # the quantized steps alone
    fast = FastLM(smollm2.model, dtype=dtype)
    with torch.inference_mode():
        reference = [greedy_tokens(*reference_lm.steps(p), 12) for p in prompts]
        first, step = fast.steps(prompts[0])
        ref_first, ref_step = reference_lm.steps(prompts[0])
        # The prompt is read in fp32 on the model's own weights: the first logits are fp32's exactly.
        assert torch.equal(first, ref_first)
        # A decode step runs the quantized products: close to fp32's, not equal; its best logits re-scored in fp32.
        token = int(torch.argmax(first))
        ref_next, next_logits = ref_step(token), step(token)
    top = int(torch.argmax(ref_next))
    assert int(torch.argmax(next_logits)) == top
    assert 0 < abs(float(next_logits[top] - ref_next[top])) < 0.5
    # Left to run free, the quantized steps drift from fp32 after the first near-tie they order differently
    # (on these short open prompts 0.47-0.83 of the tokens, by CPU: its kernels' rounding decides the ties),
    # so the rule is checked step by step instead, fed fp32's own tokens: the quantized step picks fp32's next
    # token, and where it does not, the two were a near-tie the close-call margin sends back to fp32.
    picked_alike, steps, misses = 0, 0, []
    with torch.inference_mode():
        for prompt, ref in zip(prompts, reference, strict=True):
            _first, step = fast.steps(prompt)
            for token, expected in zip(ref, ref[1:], strict=False):
                logits = step(token)
                steps += 1
                if int(torch.argmax(logits)) == expected:
                    picked_alike += 1
                else:
                    best2 = logits.topk(2).values
                    misses.append(float(best2[0] - best2[1]))
    assert fast.fp32_steps == 0 and fast.steps_run == steps + 1  # no step went back to fp32 (margin 0)
    assert picked_alike >= 0.8 * steps  # int4 30, int8 31 of 33 on the AVX2-only host
    assert all(gap < DEFAULT_CLOSE_CALL for gap in misses), misses  # gaps of 0.003-0.08 there

    # A margin wider than any gap recomputes every step in fp32: exactly fp32's tokens.
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_CLOSE_CALL", "1000")
    always = FastLM(smollm2.model, dtype=dtype)
    with torch.inference_mode():
        assert [greedy_tokens(*always.steps(p), 12) for p in prompts] == reference
    assert always.fp32_steps == always.steps_run == sum(len(r) - 1 for r in reference)


def test_the_close_call_margin_setting_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("PARSIMONY_LOCAL_LM_CLOSE_CALL", raising=False)
    assert close_call_margin() == 0.25
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_CLOSE_CALL", "0")
    assert close_call_margin() == 0.0
    for bad in ("-1", "nan", "inf", "wide"):
        monkeypatch.setenv("PARSIMONY_LOCAL_LM_CLOSE_CALL", bad)
        with pytest.raises(ValueError, match="PARSIMONY_LOCAL_LM_CLOSE_CALL must be a number"):
            close_call_margin()


@pytest.mark.slow
def test_the_default_cpu_dtype_is_the_one_fast_lm_builds(smollm2, monkeypatch):
    monkeypatch.delenv("PARSIMONY_LOCAL_LM_DTYPE", raising=False)
    assert fast_lm(smollm2).dtype == "int4-weight"
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp32")
    assert fast_lm(smollm2).dtype == "fp32"


def test_it_refuses_a_model_that_is_not_a_llama(smollm2):
    class NotLlama:
        config = type("C", (), {"model_type": "gpt2"})()

    with pytest.raises(UnsupportedModel, match="gpt2"):
        FastLM(NotLlama(), dtype="fp32")
    assert fast_lm(smollm2, "fp32") is fast_lm(smollm2, "fp32")  # built once per model and dtype


def test_the_meter_gives_the_same_text_and_stream_on_the_fast_path_as_on_the_reference(smollm2, monkeypatch):
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp32")  # the plumbing, exactly (the default is measured above)
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


def test_a_batch_step_recomputes_only_its_close_call_rows_in_fp32(smollm2):
    """A near-tie in one row of a batch recomputes that row in fp32; the other rows keep the quantized step
    (their logits and the keys written at their position), so a batch does not pay an fp32 step per close row."""
    prompts = _prompts(smollm2)
    tokens = [int(smollm2.tokenizer.encode(" The")[0])] * len(prompts)
    quantized, mixed = FastLM(smollm2.model, dtype="int4-weight"), FastLM(smollm2.model, dtype="int4-weight")
    reference = FastLM(smollm2.model, dtype="fp32")
    quantized.close_call = 0.0

    def batch(lm: FastLM):
        cache = lm.new_cache(len(prompts), 256)
        for row, ids in enumerate(prompts):
            lm.prefill(cache, row, ids)
        return cache

    with torch.inference_mode():
        q_cache, m_cache, r_cache = batch(quantized), batch(mixed), batch(reference)
        q_logits = quantized.decode_step(q_cache, tokens)
        gaps = [float(g[0] - g[1]) for g in q_logits.topk(2, dim=-1).values]
        # A margin between the rows' gaps: the rows below it are close calls, the rest are not.
        order = sorted(range(len(gaps)), key=gaps.__getitem__)
        mixed.close_call = (gaps[order[0]] + gaps[order[1]]) / 2
        close, kept = [order[0]], order[1:]
        m_logits = mixed.decode_step(m_cache, tokens)
        r_logits = reference.decode_step(r_cache, tokens)
    assert mixed.fp32_steps == 1 and mixed.fp32_rows == 1
    for row in kept:
        assert torch.equal(m_logits[row], q_logits[row])
    torch.testing.assert_close(m_logits[close[0]], r_logits[close[0]], atol=1e-3, rtol=0)
    assert not torch.allclose(q_logits[close[0]], r_logits[close[0]], atol=1e-3, rtol=0)
    position = [len(ids) for ids in prompts]
    for layer in (0, reference.n_layers - 1):
        for row in kept:
            assert torch.equal(m_cache.k[layer][row, :, position[row]], q_cache.k[layer][row, :, position[row]])
        row = close[0]
        torch.testing.assert_close(m_cache.k[layer][row, :, position[row]], r_cache.k[layer][row, :, position[row]],
                                   atol=1e-4, rtol=0)
    assert m_cache.lengths == [p + 1 for p in position]
