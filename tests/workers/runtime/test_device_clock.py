"""Local model calls are billed by device-seconds: the calling thread's CPU time on a one-thread CPU,
so time the machine gave to others (or a slow streaming client) is never billed to the call."""

from __future__ import annotations

import itertools
import math
import string
import time

import pytest
import torch

from workers.runtime.decode import decode
from workers.runtime.device_clock import device_clock
from workers.runtime.meter import generate

from .test_decode import ByteTokenizer, scripted

EOS = 0


def test_a_one_thread_cpu_is_timed_by_its_thread_cpu_time_and_anything_else_by_the_wall(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_clock("cpu") is time.thread_time
    assert device_clock("cuda") is time.perf_counter
    assert device_clock("cuda:0") is time.perf_counter
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert device_clock("cpu") is time.perf_counter  # torch's pool threads are not this thread's clock


def test_the_decode_budget_is_counted_on_the_billing_clock_not_the_wall():
    # Each step sleeps 20 ms of wall time but costs 1 ms on the billing clock: a 0.1 s budget on
    # the wall would stop after ~5 steps; on the billing clock all 30 steps fit.
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.0005  # noqa: E731 (two reads per step: 1 ms per step)
    first, step = scripted(string.ascii_letters[:30], sleep_s=0.02)  # no loop for the repetition guard
    result = decode(first_logits=first, step=step, tokenizer=ByteTokenizer(), eos={EOS}, max_new_tokens=100,
                    deadline=math.inf, budget_s=0.1, compute_started=clock(), first_step_s=0.001, clock=clock)
    assert result.finish_reason == "stop"
    assert len(result.token_ids) == 31
    assert all(s >= 0.015 for s in result.step_s) and all(s < 0.01 for s in result.step_device_s)


def test_a_budget_on_the_billing_clock_still_stops_decoding():
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.01  # noqa: E731 (a step costs ~30 ms on this clock)
    first, step = scripted(string.printable * 3)
    result = decode(first_logits=first, step=step, tokenizer=ByteTokenizer(), eos={EOS}, max_new_tokens=300,
                    deadline=math.inf, budget_s=0.3, compute_started=clock(), first_step_s=0.02, clock=clock)
    assert result.finish_reason == "budget"
    assert 3 <= len(result.token_ids) < 20


@pytest.mark.slow
def test_a_slow_streaming_client_is_not_billed_as_compute(smollm2):
    assert torch.get_num_threads() == 1  # the reference set-up the tests run in
    messages = [{"role": "user", "content": "Count from 1 to 100, one number per line."}]

    def slow_client(piece: str) -> None:
        time.sleep(0.1)  # the client reads slowly: the thread waits, the CPU does nothing for it

    result = generate(target=smollm2, messages=messages, max_output_tokens=8, wall_time_limit_s=60,
                      on_token=slow_client)
    assert result.completion_tokens == 8
    # ~8 pieces x 0.1 s of waiting are in the wall time and not in the billed compute.
    assert result.wall_s - result.compute_s >= 0.5
    assert 0 < result.compute_s < result.wall_s
