"""Continuous batching on the real SmolLM2: concurrent requests give the greedy tokens each gives alone, a
request joins a running batch between steps, stop strings and streams stay per request, and the per-request
device nanoseconds sum exactly to what the engine measured."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from workers.runtime.batching import (
    BatchEngine,
    BatchSettings,
    batch_engine,
    batch_settings,
    close_engines,
    split_ns,
)
from workers.runtime.fast_lm import fast_lm, greedy_tokens
from workers.runtime.meter import generate
from workers.runtime.token_count import chat_template_ids

QUESTIONS = [
    "Who wrote Hamlet?",
    "Write one sentence about the sea and the wind.",
    "List three colours.",
    "What is the capital of France? Answer in one word.",
]


def _ids(lm, question: str) -> list[int]:
    return chat_template_ids(lm.tokenizer, [{"role": "user", "content": question}])


def _alone(lm, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        return greedy_tokens(*fast_lm(lm, "fp32").steps(ids), n)


def _batched(engine: BatchEngine, ids: list[int], n: int, out: dict, key, after_step=None) -> None:
    request = engine.open(ids, max_new_tokens=n)
    try:
        tokens: list[int] = []
        logits = request.first_logits
        while True:
            tokens.append(int(torch.argmax(logits)))
            if len(tokens) >= n:
                break
            logits = request.step(tokens[-1])
            if after_step is not None:
                after_step(len(tokens))
        out[key] = (tokens, request)
    finally:
        request.close()


@pytest.fixture
def engine(smollm2):
    engine = BatchEngine(smollm2, fast_lm(smollm2, "fp32"), BatchSettings(max_rows=4))
    yield engine
    engine.close()


def test_split_ns_gives_shares_that_sum_exactly():
    rng = random.Random(7)
    for _ in range(200):
        total, n = rng.randrange(0, 10**12), rng.randrange(1, 17)
        shares = split_ns(total, n)
        assert sum(shares) == total and len(shares) == n and max(shares) - min(shares) <= 1
    with pytest.raises(ValueError):
        split_ns(5, 0)


def test_concurrent_requests_give_the_greedy_tokens_of_one_at_a_time(smollm2, engine):
    n = 10
    prompts = [_ids(smollm2, q) for q in QUESTIONS[:3]]
    alone = [_alone(smollm2, ids, n) for ids in prompts]
    out: dict = {}
    threads = [threading.Thread(target=_batched, args=(engine, ids, n, out, i)) for i, ids in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert [out[i][0] for i in range(3)] == alone
    assert engine.max_batch >= 2  # they did share steps
    requests = [out[i][1] for i in range(3)]
    assert sum(r.device_ns for r in requests) == engine.total_ns  # exact, in integer nanoseconds
    assert all(r.steps == n - 1 for r in requests)


def test_a_request_joins_a_running_batch_between_steps(smollm2, engine):
    first, second = _ids(smollm2, QUESTIONS[1]), _ids(smollm2, QUESTIONS[3])
    out: dict = {}
    joined = threading.Event()
    started: list[threading.Thread] = []

    def after_step(done: int) -> None:
        if done == 4 and not joined.is_set():
            joined.set()
            t = threading.Thread(target=_batched, args=(engine, second, 6, out, "b"))
            t.start()
            started.append(t)

    a = threading.Thread(target=_batched, args=(engine, first, 14, out, "a", after_step))
    a.start()
    a.join(timeout=600)
    started[0].join(timeout=600)
    tokens_a, request_a = out["a"]
    tokens_b, request_b = out["b"]
    assert tokens_a == _alone(smollm2, first, 14) and tokens_b == _alone(smollm2, second, 6)
    assert request_a.batch_sizes[0] == 1 and 2 in request_a.batch_sizes  # alone first, then shared
    assert request_a.batch_sizes[-1] == 1  # b left first: a went on alone
    assert request_a.device_ns + request_b.device_ns == engine.total_ns


def test_the_meter_batches_concurrent_generations_with_their_own_stops_and_streams(smollm2, monkeypatch):
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_ROWS", "4")
    assert batch_settings().max_rows == 4
    calls = [
        {"messages": [{"role": "user", "content": "Count from one to ten in words, separated by commas."}],
         "stop": ["5"], "max_output_tokens": 30},
        {"messages": [{"role": "user", "content": QUESTIONS[1]}], "stop": None, "max_output_tokens": 12},
    ]
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_ROWS", "1")
    alone = [generate(target=smollm2, wall_time_limit_s=600, **c) for c in calls]
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_ROWS", "4")
    close_engines()
    engine = batch_engine(smollm2)
    assert engine is not None
    results: dict = {}
    pieces: dict = {0: [], 1: []}

    def run(i: int) -> None:
        results[i] = generate(target=smollm2, wall_time_limit_s=600, on_token=pieces[i].append, **calls[i])

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        for i in range(2):
            assert results[i].text == alone[i].text and "".join(pieces[i]) == results[i].text
            assert results[i].finish_reason == alone[i].finish_reason
            assert results[i].completion_tokens == alone[i].completion_tokens
        assert "5" not in results[0].text and results[0].finish_reason == "stop"
        assert results[1].finish_reason == "length"
        total_ns = sum(round(r.compute_s * 1e9) for r in results.values())
        assert total_ns == engine.total_ns
    finally:
        close_engines()


def test_batch_settings_are_read_and_checked(monkeypatch):
    monkeypatch.delenv("PARSIMONY_BATCH_MAX_ROWS", raising=False)
    assert not batch_settings().enabled
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_ROWS", "zero")
    with pytest.raises(ValueError, match="PARSIMONY_BATCH_MAX_ROWS must be an integer"):
        batch_settings()
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_ROWS", "8")
    monkeypatch.setenv("PARSIMONY_BATCH_MAX_KV_MB", "0")
    with pytest.raises(ValueError, match="PARSIMONY_BATCH_MAX_KV_MB must be >= 1"):
        batch_settings()
