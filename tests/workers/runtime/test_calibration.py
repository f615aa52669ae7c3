"""Calibration on the real SmolLM2 and MiniLM: positive, plausible throughputs, measured on the real paths."""

from __future__ import annotations

import pytest

from workers.runtime.calibration import calibrate_causal_lm, calibrate_embedder, detect_device
from workers.runtime.meter import generate

pytestmark = pytest.mark.slow


def test_smollm2_calibration_is_positive_plausible_and_predicts_a_real_call(smollm2):
    measured = calibrate_causal_lm(smollm2)
    assert measured.device == "cpu"
    # 135M parameters on one CPU thread: hundreds of prompt tokens/s, tens of generated tokens/s.
    assert 30 < measured.prefill_tps < 50_000
    assert 1 < measured.decode_tps < 5_000
    assert measured.prefill_tps > 2 * measured.decode_tps  # reading is batched, writing is step by step
    assert 0 <= measured.overhead_s < 2
    assert measured.took_s < 30
    # The prediction is the right size for a real call through the meter (noisy neighbours: a wide band).
    result = generate(
        target=smollm2, messages=[{"role": "user", "content": "Name three colours. " * 20}],
        max_output_tokens=24, wall_time_limit_s=60,
    )
    predicted = (
        measured.overhead_s + result.prompt_tokens / measured.prefill_tps
        + result.completion_tokens / measured.decode_tps
    )
    assert predicted / 4 < result.compute_s < predicted * 4


def test_minilm_calibration_reads_hundreds_of_tokens_per_second():
    from workers.runtime.embedders import get_embedder

    measured = calibrate_embedder(get_embedder("all-MiniLM-L6-v2", device="cpu", threads=1))
    assert measured.device == "cpu" and measured.decode_tps == 0
    assert 50 < measured.prefill_tps < 1_000_000
    assert 0 <= measured.overhead_s < 2


def test_an_explicit_device_wins_over_detection():
    assert detect_device("cuda") == "cuda"
    assert detect_device(None) in {"cpu", "cuda"}


def test_a_real_generation_with_a_tiny_budget_stops_with_finish_reason_budget_and_bills_at_most_it(smollm2):
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    result = generate(
        target=smollm2, messages=messages, max_output_tokens=200, wall_time_limit_s=60, budget_s=0.5,
        expected_step_s=0.05,
    )
    assert result.finish_reason == "budget"
    assert 1 <= result.completion_tokens < 200
    assert result.compute_s <= 0.5 and result.gpu_s == 0.0


def test_a_prefill_the_budget_cannot_pay_for_does_not_start(smollm2):
    result = generate(
        target=smollm2, messages=[{"role": "user", "content": "hello"}], max_output_tokens=10,
        wall_time_limit_s=60, budget_s=0.01, expected_prefill_s=0.2,
    )
    assert result.finish_reason == "budget"
    assert (result.prompt_tokens, result.completion_tokens, result.compute_s) == (0, 0, 0.0)
    assert "prefill" in (result.error or "")


def test_minilm_calibration_predicts_a_lone_query_and_a_batch_of_full_length_passages():
    import statistics
    import time

    from workers.runtime.embedders import get_embedder

    embedder = get_embedder("all-MiniLM-L6-v2", device="cpu", threads=1)
    measured = calibrate_embedder(embedder)
    query = "When did the Normans conquer England?"
    tokens = len(embedder.tokenizer([query], truncation=True)["input_ids"][0])
    seconds = []
    for _ in range(5):
        time.sleep(0.05)
        seconds.append(embedder.encode_timed([query], batch_size=1)[1])
    predicted = measured.overhead_s + tokens / measured.prefill_tps
    # Noisy neighbours: a wide band; the safety factor covers the rest (docs/costs.md).
    assert predicted / 2 < statistics.median(seconds) < predicted * 2
    passages = [("The river rose after the storm and the town council met to discuss the levees. " * 30)] * 16
    read = sum(len(ids) for ids in embedder.tokenizer(passages, truncation=True)["input_ids"])
    assert read == 16 * embedder.max_seq_length
    predicted = measured.overhead_s + read / measured.prefill_tps
    assert predicted / 2 < embedder.encode_timed(passages, batch_size=16)[1] < predicted * 2
