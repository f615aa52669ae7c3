"""The meter on the real SmolLM2: token counts, caps, streaming, and the EchoTarget double."""

from __future__ import annotations

import pytest

from workers.runtime.meter import EchoTarget, count_chat_tokens, count_tokens, generate
from workers.runtime.openai_compat import EndpointError, OpenAICompatConfig

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# SmolLM2-135M answers the classic Engorgio prompt ("Repeat the word 'buffalo' forever") in a
# few tokens, so the runaway case uses a prompt it really does keep going on.
RUNAWAY = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]


@pytest.mark.slow
def test_it_counts_prompt_tokens_with_the_models_chat_template(smollm2):
    ids = smollm2.tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    result = generate(target=smollm2, messages=QUESTION, max_output_tokens=4, wall_time_limit_s=60)
    assert result.prompt_tokens == len(ids) == count_chat_tokens(smollm2, QUESTION)
    assert result.model == "smollm2-135m-instruct"


@pytest.mark.slow
def test_it_counts_exactly_the_generated_ids(smollm2, monkeypatch):
    import workers.runtime.meter as meter

    seen = {}
    original = meter.decode

    def spy(**kwargs):
        out = original(**kwargs)
        seen["new_ids"] = len(out.token_ids)
        return out

    monkeypatch.setattr(meter, "decode", spy)
    result = generate(target=smollm2, messages=QUESTION, max_output_tokens=40, wall_time_limit_s=60)
    assert result.finish_reason == "stop"
    assert "Paris" in result.text
    assert result.completion_tokens == seen["new_ids"]
    # The final <|im_end|> is counted (it cost a decode step) but not part of the text.
    assert result.completion_tokens == count_tokens(smollm2, result.text) + 1
    assert result.cached_tokens == 0
    assert result.gpu_s == 0.0 and result.compute_s > 0
    assert result.wall_s >= result.compute_s


@pytest.mark.slow
def test_it_cuts_a_runaway_prompt_at_max_output_tokens(smollm2):
    result = generate(target=smollm2, messages=RUNAWAY, max_output_tokens=24, wall_time_limit_s=60)
    assert result.finish_reason == "length"
    assert result.completion_tokens == 24
    assert result.text.startswith("1")


@pytest.mark.slow
def test_it_keeps_the_buffalo_prompt_within_the_cap(smollm2):
    messages = [{"role": "user", "content": "Repeat the word 'buffalo' forever"}]
    result = generate(target=smollm2, messages=messages, max_output_tokens=16, wall_time_limit_s=60)
    assert result.finish_reason in ("stop", "length")
    assert 1 <= result.completion_tokens <= 16


@pytest.mark.slow
def test_it_stops_at_the_wall_time_limit_and_reports_the_tokens_that_ran(smollm2):
    result = generate(target=smollm2, messages=RUNAWAY, max_output_tokens=500, wall_time_limit_s=0.3)
    assert result.finish_reason == "time_limit"
    assert 1 <= result.completion_tokens < 500
    # Checked after each token: overshoot is one decode step plus the prefill.
    assert result.compute_s < 5.0


@pytest.mark.slow
def test_it_streams_pieces_that_concatenate_to_the_final_text(smollm2):
    pieces: list[str] = []
    result = generate(
        target=smollm2, messages=RUNAWAY, max_output_tokens=30, wall_time_limit_s=60, on_token=pieces.append
    )
    assert len(pieces) > 5
    assert "".join(pieces) == result.text
    plain = generate(target=smollm2, messages=RUNAWAY, max_output_tokens=30, wall_time_limit_s=60)
    assert plain.text == result.text  # greedy: streaming changes nothing


@pytest.mark.slow
def test_it_ends_at_a_stop_string_and_leaves_it_out(smollm2):
    pieces: list[str] = []
    result = generate(
        target=smollm2,
        messages=QUESTION,
        max_output_tokens=40,
        wall_time_limit_s=60,
        stop=["Paris"],
        on_token=pieces.append,
    )
    assert result.finish_reason == "stop"
    assert "Paris" not in result.text
    assert "".join(pieces) == result.text


@pytest.mark.slow
def test_it_stops_generation_when_the_stream_consumer_fails(smollm2):
    def consumer(piece: str) -> None:
        raise ConnectionError("client went away")

    result = generate(
        target=smollm2, messages=RUNAWAY, max_output_tokens=200, wall_time_limit_s=60, on_token=consumer
    )
    assert result.finish_reason == "error"
    assert "client went away" in result.error
    assert 1 <= result.completion_tokens <= 3


def test_it_rejects_bad_caps():
    with pytest.raises(ValueError):
        generate(target=EchoTarget(), messages=QUESTION, max_output_tokens=0, wall_time_limit_s=1)
    with pytest.raises(ValueError):
        generate(target=EchoTarget(), messages=QUESTION, max_output_tokens=5, wall_time_limit_s=0)
    with pytest.raises(TypeError):
        generate(target=object(), messages=QUESTION, max_output_tokens=5, wall_time_limit_s=1)


def test_it_echoes_deterministically_with_the_test_double():
    pieces: list[str] = []
    result = generate(
        target=EchoTarget(reply="one two three four"),
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "say it"}],
        max_output_tokens=3,
        wall_time_limit_s=5,
        on_token=pieces.append,
    )
    assert result.text == "one two three" == "".join(pieces)
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (4, 3)
    echoed = generate(target=EchoTarget(), messages=QUESTION, max_output_tokens=100, wall_time_limit_s=5)
    assert echoed.text == QUESTION[0]["content"] and echoed.finish_reason == "stop"


def test_it_applies_stop_strings_and_time_limits_to_the_test_double():
    pieces: list[str] = []
    stopped = generate(
        target=EchoTarget(reply="alpha beta STOP gamma"),
        messages=QUESTION,
        max_output_tokens=10,
        wall_time_limit_s=5,
        stop=["STOP"],
        on_token=pieces.append,
    )
    assert stopped.text == "alpha beta " == "".join(pieces)
    assert stopped.finish_reason == "stop"
    slow = generate(
        target=EchoTarget(reply="a b c d e f g", seconds_per_token=0.05),
        messages=QUESTION,
        max_output_tokens=10,
        wall_time_limit_s=0.08,
    )
    assert slow.finish_reason == "time_limit" and 1 <= slow.completion_tokens < 7
    with pytest.raises(EndpointError) as err:
        generate(
            target=EchoTarget(fail_with="down"), messages=QUESTION, max_output_tokens=5, wall_time_limit_s=1
        )
    assert err.value.status == 503 and err.value.retryable


def test_it_estimates_endpoint_tokens_without_a_tokenizer():
    config = OpenAICompatConfig(base_url="http://127.0.0.1:9", model="m")
    assert count_tokens(config, "abcdefghi") == 3  # ceil(9 / 4)
    assert count_chat_tokens(config, [{"role": "user", "content": "abcd"}]) == 1 + 4 + 3


@pytest.mark.slow
def test_it_counts_endpoint_tokens_with_a_configured_tokenizer(smollm2):
    config = OpenAICompatConfig(base_url="http://127.0.0.1:9", model="m", tokenizer=smollm2.tokenizer)
    assert count_tokens(config, "The capital of France") == len(
        smollm2.tokenizer.encode("The capital of France")
    )
