"""The shared decode loop: stop conditions and finish reasons on scripted steps, then on the real SmolLM2
against transformers' `generate` and against the loops the meter, fixed-context attention and
superposition ran before they shared it."""

from __future__ import annotations

import math
import time

import pytest
import torch

from workers.runtime.decode import (
    Allowance,
    TextStream,
    as_allowance,
    causal_lm_steps,
    decode,
    eos_ids,
    finish_reason,
    greedy,
    sampler,
    token_logprob,
    truncate_at_stop,
)
from workers.runtime.decoding import DecodingSettings, decoding_settings

EOS = 0
VOCAB = 256
# Long text without a loop in it (the degeneration guard would stop "aaaa…" as one).
COUNTING = " ".join(str(i) for i in range(200))


class ByteTokenizer:
    """Token ids are UTF-8 bytes; id 0 is the end of sequence (a special token)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        kept = [i for i in ids if not (skip_special_tokens and i == EOS)]
        return bytes(kept).decode("utf-8", errors="replace")


def one_hot(token: int) -> torch.Tensor:
    logits = torch.zeros(VOCAB)
    logits[token] = 1.0
    return logits


def scripted(text: str, *, then_eos: bool = True, sleep_s: float = 0.0):
    """-> (first logits, step) that make a greedy decode produce `text` byte by byte (then EOS)."""
    ids = list(text.encode("utf-8")) + ([EOS] if then_eos else [])
    calls: list[int] = []

    def step(token: int) -> torch.Tensor:
        calls.append(token)
        if sleep_s:
            time.sleep(sleep_s)
        i = len(calls)
        return one_hot(ids[i] if i < len(ids) else ord("x"))

    step.calls = calls  # type: ignore[attr-defined]
    return one_hot(ids[0]), step


def run(text: str, *, max_new_tokens: int = 100, deadline: float | None = None, **kwargs):
    first, step = scripted(text, then_eos=kwargs.pop("then_eos", True), sleep_s=kwargs.pop("sleep_s", 0.0))
    result = decode(first_logits=first, step=step, tokenizer=ByteTokenizer(), eos={EOS},
                    max_new_tokens=max_new_tokens, deadline=deadline if deadline is not None else math.inf, **kwargs)
    return result, step.calls


# ---------------------------------------------------------------------------- scripted steps


def test_it_stops_at_eos_counts_it_and_leaves_it_out_of_the_text():
    result, calls = run("hi.")
    assert result.token_ids == [ord("h"), ord("i"), ord("."), EOS]
    assert result.text == "hi." and result.finish_reason == "stop" and result.error is None
    assert len(calls) == 3  # one step per token after the first, none after EOS
    assert len(result.step_s) == len(result.step_cpu_s) == 3 and result.decode_s >= 0


def test_it_records_each_picked_tokens_log_probability():
    result, _ = run("hi.")
    # A one-hot logit row (1 for the token, 0 for the 255 others), by hand: 1 - log(e + 255).
    expected = 1 - math.log(math.e + VOCAB - 1)
    assert len(result.token_logprobs) == len(result.token_ids) == 4
    assert all(value == pytest.approx(expected, abs=1e-6) for value in result.token_logprobs)
    logits = torch.tensor([2.0, 0.0, -1.0, float("-inf")])
    assert token_logprob(logits, 0) == pytest.approx(2 - math.log(math.exp(2) + 1 + math.exp(-1)), abs=1e-6)
    assert token_logprob(logits, 3) == float("-inf")


def test_it_stops_at_max_new_tokens_with_finish_reason_length():
    result, calls = run("abcdefgh", max_new_tokens=4)
    assert result.text == "abcd" and result.finish_reason == "length"
    assert len(calls) == 3


def test_eos_as_the_last_allowed_token_is_a_stop_not_a_length():
    result, _ = run("ab", max_new_tokens=3)
    assert result.token_ids[-1] == EOS and result.finish_reason == "stop"


def test_it_produces_one_token_when_the_deadline_has_already_passed():
    result, calls = run("abcdef", deadline=time.perf_counter() - 1)
    assert result.token_ids == [ord("a")] and result.finish_reason == "time_limit" and calls == []


def test_it_checks_the_deadline_after_every_token():
    result, _ = run(COUNTING, deadline=time.perf_counter() + 0.05, sleep_s=0.02)
    assert result.finish_reason == "time_limit"
    assert 1 <= len(result.token_ids) < len(COUNTING)


def test_it_stops_before_a_step_the_budget_cannot_pay_for_with_finish_reason_budget():
    started = time.perf_counter()
    result, calls = run(COUNTING, budget_s=0.2, compute_started=started, sleep_s=0.02, first_step_s=0.02)
    spent = time.perf_counter() - started
    assert result.finish_reason == "budget"
    assert 3 <= len(calls) < len(COUNTING) and len(result.token_ids) == len(calls) + 1
    assert spent <= 0.2 + 0.01  # the last step started only if its predicted time still fitted


def test_an_allowance_grows_while_decoding_in_slices_and_stops_where_growth_is_refused():
    asked: list[tuple[float, float]] = []
    cap_s = 0.15  # the budget lets the hold grow to 0.15 s of compute, no further

    def grow(needed_s: float, step_s: float) -> float:
        asked.append((needed_s, step_s))
        want = needed_s + max(4 * step_s, 0.25 * needed_s)
        return want if want <= cap_s else (needed_s if needed_s <= cap_s else allowance.seconds)

    allowance = Allowance(0.03, grow)
    started = time.perf_counter()
    result, calls = run(COUNTING, budget_s=allowance, compute_started=started, sleep_s=0.01, first_step_s=0.01)
    assert result.finish_reason == "budget" and 5 <= len(calls) < len(COUNTING)
    # It asked only when the next step would pass the hold, growing by slices, not once a step.
    assert 1 < allowance.grown < len(calls) / 2 and len(asked) >= allowance.grown
    assert 0.03 < allowance.seconds <= cap_s and result.budget_s == allowance.seconds
    assert all(needed > 0 and step > 0 for needed, step in asked)


def test_an_allowance_without_growth_is_a_plain_limit_and_refuses_a_negative_one():
    assert as_allowance(None) is None
    plain = as_allowance(0.5)
    assert isinstance(plain, Allowance) and plain.covers(0.5) and not plain.covers(0.6)
    assert plain.seconds == 0.5 and plain.grown == 0
    with pytest.raises(ValueError, match="budget_s must be >= 0"):
        as_allowance(-1.0)
    # A grow that grants less than needed changes nothing but is still asked.
    stingy = Allowance(0.1, lambda needed, step: 0.05)
    assert not stingy.covers(0.2) and stingy.seconds == 0.1 and stingy.grown == 0


def test_a_budget_too_small_for_one_step_still_yields_the_first_token_without_stepping():
    result, calls = run("abc", budget_s=0.01, first_step_s=0.05)
    assert result.token_ids == [ord("a")] and result.finish_reason == "budget" and calls == []


def test_without_a_budget_the_same_decode_runs_to_its_cap():
    result, _ = run(COUNTING, max_new_tokens=20, sleep_s=0.001)
    assert result.finish_reason == "length" and len(result.token_ids) == 20


def test_the_model_ending_wins_over_the_budget():
    result, _ = run("ab", budget_s=0.0)
    assert result.finish_reason == "budget"  # no step: the first token only, the budget stopped it
    result, _ = run("a", budget_s=10.0)
    assert result.finish_reason == "stop"


def test_a_failing_callback_stops_at_once_with_finish_reason_error_and_keeps_the_tokens():
    def hang_up(piece: str) -> None:
        raise ConnectionError("client went away")

    result, calls = run("abcdef", on_token=hang_up)
    assert result.finish_reason == "error" and "client went away" in result.error
    assert result.token_ids == [ord("a")] and calls == []
    assert result.text == "a"  # the usage and text are still reported


def test_streamed_pieces_concatenate_to_the_text_and_hold_back_a_partial_character():
    pieces: list[str] = []
    result, _ = run("café au lait", on_token=pieces.append)
    assert "".join(pieces) == result.text == "café au lait"
    assert all("\ufffd" not in p for p in pieces)  # "é" is two bytes: never streamed half
    assert "é" in pieces or any(p.endswith("é") for p in pieces)


def test_the_stream_holds_back_what_could_become_a_stop_string_and_never_streams_it():
    pieces: list[str] = []
    stream = TextStream(ByteTokenizer(), pieces.append, stop=["STOP"])
    for b in b"abc ST":
        stream.add(b)
    assert "".join(pieces) == "abc "  # "ST" may start "STOP"
    for b in b"OP and more":
        stream.add(b)
    stream.finish("abc ")
    assert "".join(pieces) == "abc "


def test_held_back_text_is_flushed_when_no_stop_string_follows():
    pieces: list[str] = []
    stream = TextStream(ByteTokenizer(), pieces.append, stop=["STOP"])
    for b in b"abc ST":
        stream.add(b)
    stream.finish("abc ST")
    assert "".join(pieces) == "abc ST"


def test_the_finish_reason_prefers_a_failed_callback_then_the_models_end_then_the_caps():
    base = dict(callback_failed=False, stop_hit=False, ended_with_eos=False, n_generated=3, max_new_tokens=10,
                timed_out=False)
    assert finish_reason(**base) == "stop"
    assert finish_reason(**{**base, "timed_out": True}) == "time_limit"
    assert finish_reason(**{**base, "timed_out": True, "n_generated": 10}) == "length"
    assert finish_reason(**{**base, "n_generated": 10, "ended_with_eos": True}) == "stop"
    assert finish_reason(**{**base, "n_generated": 10, "stop_hit": True}) == "stop"
    assert finish_reason(**{**base, "ended_with_eos": True, "callback_failed": True}) == "error"


# ---------------------------------------------------------------------------- the degeneration guard


def test_it_stops_a_phrase_loop_as_repetition_and_records_the_tokens_not_spent():
    loop = "The answer is: " * 21
    result, calls = run(loop, max_new_tokens=128)
    assert result.finish_reason == "repetition"
    # Three copies of the 15-byte phrase (≥ 20 tokens in all) are enough to call it a loop.
    assert len(result.token_ids) == 45 and result.text == "The answer is: " * 3
    assert result.repetition_tokens_saved == 128 - 45 and len(calls) == 44


def test_it_stops_a_line_repeated_even_with_other_lines_between():
    text = "The token ratio is\nIt is set\nThe token ratio is\nOk then\nThe token ratio is\nmore"
    result, _ = run(text, max_new_tokens=200)
    assert result.finish_reason == "repetition"
    assert result.text.endswith("The token ratio is\n") and result.text.count("The token ratio") == 3


def test_it_stops_a_sentence_repeated_whatever_separates_the_copies():
    # Not periodic (a space, a line break, a space): the sentence rule catches it at the third copy.
    text = "The context is a bit unclear. The context is a bit unclear.\nThe context is a bit unclear. So it goes on."
    result, _ = run(text, max_new_tokens=200)
    assert result.finish_reason == "repetition" and result.text.endswith("unclear.")
    assert result.text.count("The context is a bit unclear.") == 3


def test_a_single_token_run_stops_once_it_is_long_enough_not_before():
    result, _ = run("Wow" + "!" * 60, max_new_tokens=100)
    assert result.finish_reason == "repetition" and result.text == "Wow" + "!" * 20
    result, _ = run("Wow" + "!" * 19)
    assert result.finish_reason == "stop"


@pytest.mark.parametrize("text", [
    "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12",  # a list: lines differ
    "It is very very very good, no no no.",  # short words repeated
    "- yes\n- yes\n- yes\n",  # short repeated lines (lists, code) are not loops
    "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n",
    "Paris is the capital of France. Paris is also its largest city. Paris has 2 million people.",
    "1. Yes.\n2. Yes.\n3. Yes.\n4. No.\n5. Yes, e.g. here.\n",  # short sentences repeat legitimately
    COUNTING,
])
def test_normal_text_with_legitimate_repeats_runs_to_its_end(text):
    result, _ = run(text, max_new_tokens=len(text) + 1)
    assert result.finish_reason == "stop" and result.text == text and result.repetition_tokens_saved == 0


def test_the_guard_can_be_turned_off_and_is_off_when_decoding_through_eos():
    loop = "The answer is: " * 10
    off = DecodingSettings(repetition_guard=False)
    assert run(loop, max_new_tokens=200, decoding=off)[0].finish_reason == "stop"
    assert run(loop, max_new_tokens=100, ignore_eos=True, then_eos=False)[0].finish_reason == "length"


def test_a_repetition_penalty_changes_the_pick_for_tokens_already_generated():
    # Logits favour "a" then "b"; with a strong penalty the second step avoids repeating "a".
    logits = torch.zeros(VOCAB)
    logits[ord("a")], logits[ord("b")] = 2.0, 1.5

    def step(token: int) -> torch.Tensor:
        return logits.clone()

    plain = decode(first_logits=logits.clone(), step=step, tokenizer=ByteTokenizer(), eos={EOS}, max_new_tokens=3,
                   deadline=math.inf, decoding=DecodingSettings(repetition_guard=False))
    penalised = decode(first_logits=logits.clone(), step=step, tokenizer=ByteTokenizer(), eos={EOS},
                       max_new_tokens=3, deadline=math.inf,
                       decoding=DecodingSettings(repetition_guard=False, repetition_penalty=2.0))
    assert plain.text == "aaa" and penalised.text == "aba"


def test_model_defaults_and_pipeline_overrides_are_validated():
    assert decoding_settings("smollm2-135m-instruct").repetition_guard is True
    tuned = decoding_settings("smollm2-135m-instruct", {"no_repeat_ngram_size": 4, "stop": ["\n\n"]})
    assert tuned.no_repeat_ngram_size == 4 and tuned.stop == ("\n\n",)
    for bad, message in [({"beam_width": 2}, "unknown decoding options: beam_width"),
                         ({"temperature": 3}, "between 0 \\(greedy\\) and 2"),
                         ({"repetition_penalty": 0.5}, "between 1.0"), ({"no_repeat_ngram_size": -1}, "between 0"),
                         ({"stop": "x"}, "stop must be a list"), ({"repetition_guard": "yes"}, "true or false")]:
        with pytest.raises(ValueError, match=message):
            decoding_settings("smollm2", bad)


def test_the_finish_reason_ranks_a_loop_after_the_models_end_and_before_the_caps():
    base = dict(callback_failed=False, stop_hit=False, ended_with_eos=False, n_generated=10, max_new_tokens=10,
                timed_out=True, looped=True)
    assert finish_reason(**base) == "repetition"
    assert finish_reason(**{**base, "ended_with_eos": True}) == "stop"


def test_truncate_at_stop_cuts_before_the_earliest_stop_string():
    assert truncate_at_stop("one, two. three", [".", ","]) == ("one", True)
    assert truncate_at_stop("one two", ["x", ""]) == ("one two", False)
    assert truncate_at_stop("one two", None) == ("one two", False)


def test_it_refuses_a_cap_below_one_token():
    with pytest.raises(ValueError):
        run("a", max_new_tokens=0)


def test_a_top_k_1_sampler_picks_the_greedy_token_and_sampling_needs_a_temperature():
    logits = torch.tensor([0.1, 2.0, 1.9, -3.0])
    pick = sampler(0.7, top_k=1)
    assert {pick(logits) for _ in range(20)} == {greedy(logits)} == {1}
    assert {sampler(1.0, top_k=2)(logits) for _ in range(200)} <= {1, 2}
    with pytest.raises(ValueError):
        sampler(0.0)


# ---------------------------------------------------------------------------- the real model

CHATS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
]


def _prompt_ids(lm, messages) -> list[int]:
    return list(lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))


def _decode_directly(lm, prompt_ids, max_new_tokens, stop=None):
    with torch.inference_mode():
        first, step = causal_lm_steps(lm, prompt_ids)
        return decode(first_logits=first, step=step, tokenizer=lm.tokenizer, eos=eos_ids(lm),
                      max_new_tokens=max_new_tokens, deadline=math.inf, stop=stop, prompt_ids=prompt_ids)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [None, ["\n", "sea"]])
def test_it_decodes_token_for_token_like_transformers_generate(smollm2, stop):
    # transformers' generate is what the meter ran before the shared loop.
    for messages in CHATS:
        ids = _prompt_ids(smollm2, messages)
        got = _decode_directly(smollm2, ids, 24, stop=stop)
        extra = {"stop_strings": stop, "tokenizer": smollm2.tokenizer} if stop else {}
        with torch.inference_mode():
            out = smollm2.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         max_new_tokens=24, do_sample=False, eos_token_id=sorted(eos_ids(smollm2)),
                                         pad_token_id=smollm2.tokenizer.pad_token_id, **extra)
        assert got.token_ids == out[0, len(ids):].tolist()


@pytest.mark.slow
def test_the_meter_gives_what_decode_gives_directly(smollm2):
    from workers.runtime.meter import generate

    for messages in CHATS:
        pieces: list[str] = []
        metered = generate(target=smollm2, messages=messages, max_output_tokens=24, wall_time_limit_s=120,
                           on_token=pieces.append, stop=["sea"])
        direct = _decode_directly(smollm2, _prompt_ids(smollm2, messages), 24, stop=["sea"])
        assert (metered.text, metered.completion_tokens, metered.finish_reason) == (
            direct.text, len(direct.token_ids), direct.finish_reason)
        assert "".join(pieces) == metered.text


@pytest.mark.slow
def test_the_meter_reports_the_log_probabilities_transformers_scores_give(smollm2, monkeypatch):
    from workers.runtime.meter import generate

    # The plumbing, exactly: fp32 weights (the CPU default int4-weight moved these by up to 0.005).
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp32")

    messages = CHATS[0]
    ids = _prompt_ids(smollm2, messages)
    metered = generate(target=smollm2, messages=messages, max_output_tokens=12, wall_time_limit_s=120)
    with torch.inference_mode():
        out = smollm2.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=12, do_sample=False, eos_token_id=sorted(eos_ids(smollm2)),
                                     pad_token_id=smollm2.tokenizer.pad_token_id, output_logits=True,
                                     return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    reference = [float(torch.log_softmax(row[0].float(), dim=-1)[t]) for row, t in zip(out.logits, tokens, strict=True)]
    assert metered.token_logprobs == pytest.approx(reference, abs=1e-3)
    assert all(value <= 0 for value in metered.token_logprobs)


def _old_greedy_loop(first_logits, step, eos, max_new_tokens):
    """The loop fixed-context attention and superposition each carried before sharing `decode`."""
    generated: list[int] = []
    logits = first_logits
    while True:
        token = int(torch.argmax(logits))
        generated.append(token)
        if token in eos or len(generated) >= max_new_tokens:
            return generated
        logits = step(token)


@pytest.mark.slow
def test_fixed_context_attention_answers_as_its_own_loop_did(smollm2, tmp_path):
    from indexes.kv_store import KVStore
    from tests.workers.attention.handbook import HANDBOOK, QUESTION
    from workers.attention import get_backend
    from workers.attention.base import attention_implementation
    from workers.attention.fixed_context import (
        FixedContextConfig,
        answer,
        build_context,
        clear_process_cache,
        ensure_context,
        forward_user,
        max_positions,
        user_ids,
    )
    from workers.runtime.local_lm import LoadedModel

    lm: LoadedModel = smollm2
    store = KVStore(tmp_path)
    clear_process_cache()
    try:
        result = answer(lm, store=store, system_prompt="", context_text=HANDBOOK, question=QUESTION,
                        max_output_tokens=16, wall_time_limit_s=120)
        prompt = build_context(lm.tokenizer, system_prompt="", context_text=HANDBOOK, max_positions=max_positions(lm))
        u_ids = user_ids(lm.tokenizer, prompt, QUESTION)
        n_ctx = len(prompt.context_ids)
        with torch.inference_mode():
            ctx = ensure_context(lm, store, prompt.context_ids, FixedContextConfig())
            state = get_backend("full").state(ctx.value.fixed, None, None)
            with attention_implementation(lm.model):
                from transformers import DynamicCache

                cache = DynamicCache(config=lm.model.config)
                position = [n_ctx + len(u_ids)]

                def step(token: int) -> torch.Tensor:
                    logits = forward_user(lm, state, cache, [token], position[0])
                    position[0] += 1
                    return logits

                ids = _old_greedy_loop(forward_user(lm, state, cache, u_ids, n_ctx), step, eos_ids(lm), 16)
    finally:
        clear_process_cache()
    assert result.completion_tokens == len(ids)
    assert result.text == lm.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_superposition_answers_as_its_own_loop_did(smollm2):
    from tests.workers.prompting.conftest import EIFFEL, NOBEL, PARIS
    from tests.workers.prompting.conftest import QUESTION as NOBEL_QUESTION
    from workers.prompting.superposition import SuperpositionPrompting

    strategy = SuperpositionPrompting()
    passages = [NOBEL, PARIS, EIFFEL]
    result = strategy.generate(model=smollm2, system_prompt="", question=NOBEL_QUESTION, passages=passages,
                               max_output_tokens=16, wall_time_limit_s=120)
    prepared = strategy.prepare(model=smollm2, system_prompt="", question=NOBEL_QUESTION, passages=passages)
    model = smollm2.model
    cache, position = prepared.cache, [prepared.next_position]

    def step(token: int) -> torch.Tensor:  # the pre-refactor `_decode` step, verbatim
        nonlocal cache
        kv_len = cache.get_seq_length()
        position_ids = torch.tensor([[position[0]]], dtype=torch.float32)
        mask = torch.zeros(1, 1, 1, kv_len + 1, dtype=model.dtype)
        out = model(input_ids=torch.tensor([[token]]), position_ids=position_ids, attention_mask=mask,
                    cache=cache, use_cache=True, logits_to_keep=1)
        cache, position[0] = out.cache, position[0] + 1
        return out.logits[0, -1]

    with torch.inference_mode():
        ids = _old_greedy_loop(prepared.first_logits, step, eos_ids(smollm2), 16)
    assert result.completion_tokens == len(ids)
    assert result.text == smollm2.tokenizer.decode(ids, skip_special_tokens=True)
    assert "Röntgen" in result.text or "1901" in result.text


LOOPING = [{"role": "user", "content": "Repeat after me: The answer is:"}]  # SmolLM2 repeats it to the cap


@pytest.mark.slow
def test_the_real_model_stops_a_loop_early_and_reports_the_tokens_not_spent(smollm2):
    from workers.runtime.meter import generate

    result = generate(target=smollm2, messages=LOOPING, max_output_tokens=64, wall_time_limit_s=120)
    assert result.finish_reason == "repetition"
    assert result.text.count("The answer is:") >= 3 and result.completion_tokens < 32
    assert result.repetition_tokens_saved == 64 - result.completion_tokens
    unguarded = generate(target=smollm2, messages=LOOPING, max_output_tokens=32, wall_time_limit_s=120,
                         decoding=DecodingSettings(repetition_guard=False))
    assert unguarded.finish_reason == "length" and unguarded.text.count("The answer is:") >= 6
