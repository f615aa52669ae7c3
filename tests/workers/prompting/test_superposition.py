"""Superposition prompting on the real SmolLM2, checked against plain forwards of the same tokens.

Every fast path is compared with the plain computation: the one-document ForkJoin prompt with
integer positions against the naive prompt, cached KV against a fresh forward, re-rotated keys
against keys computed at the shifted positions, pruned paths against prompts without them.
"""

from __future__ import annotations

import pytest
import torch

from indexes.kv_store import KVStore
from tests.workers.prompting.conftest import EIFFEL, NOBEL, PARIS, QUESTION
from workers.prompting import get_strategy
from workers.prompting.base import Passage
from workers.prompting.naive import INSTRUCTION
from workers.prompting.superposition import (
    SuperpositionConfig,
    SuperpositionPrompting,
    build_forkjoin,
    document_key,
    keep_top_k,
    layout_positions,
    preamble_key,
    rerotate_keys,
    rotary_of,
)

BERLIN = Passage(12, "Berlin", "Berlin is the capital and largest city of Germany, with 3.7 million inhabitants.")
ROME = Passage(21, "Rome", "Rome is the capital of Italy.")
PARIS_SHORT = Passage(22, "Paris", "Paris is the capital of France.")


def prepare(model, passages, store=None, **config):
    strategy = SuperpositionPrompting(SuperpositionConfig(**config))
    return strategy.prepare(model=model, system_prompt="", question=QUESTION, passages=passages, kv_store=store)


def forward(model, ids, positions=None):
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids]), position_ids=positions, use_cache=True)


# ---------------------------------------------------------------- pure pieces (no model)


def test_it_spaces_every_path_over_the_harmonic_mean_of_the_path_lengths():
    layout = layout_positions(10, [4, 12, 6], 3, "equalized")
    harmonic = 3 / (1 / 4 + 1 / 12 + 1 / 6)  # 6.0
    for positions, length in zip(layout.doc_positions, [4, 12, 6], strict=True):
        assert positions[0] == 10
        assert positions[1] - positions[0] == pytest.approx(harmonic / length)
        assert positions[-1] + harmonic / length == pytest.approx(10 + harmonic)  # every path spans [|P|, |P| + H)
    assert layout.query_positions == [[16.0, 17.0, 18.0]] * 3
    assert layout.answer_start([0]) == layout.answer_start([1, 2]) == 19.0


def test_it_lays_integer_positions_out_sequentially_per_path():
    layout = layout_positions(10, [4, 12], 3, "integer")
    assert layout.doc_positions[0] == [10.0, 11.0, 12.0, 13.0]
    assert layout.query_positions[0] == [14.0, 15.0, 16.0]
    assert layout.query_positions[1] == [22.0, 23.0, 24.0]
    assert layout.answer_start([0]) == 17.0 and layout.answer_start([0, 1]) == 25.0


def test_it_keeps_the_top_k_scores_in_their_original_order():
    assert keep_top_k([-3.0, -1.0, -2.0, -0.5], 2) == [1, 3]
    assert keep_top_k([-1.0, -1.0, -2.0], 1) == [0]  # ties: the earlier path
    assert keep_top_k([-1.0, -2.0], None) == [0, 1]
    assert keep_top_k([-1.0, -2.0], 5) == [0, 1]
    with pytest.raises(ValueError):
        keep_top_k([-1.0, -2.0], 0)


def test_it_is_registered_and_runs_the_model_itself():
    strategy = get_strategy("superposition")
    assert strategy.runs_model is True and get_strategy("naive").runs_model is False
    messages = strategy.build_messages(system_prompt="", question="q?", passages=[PARIS])
    assert messages == get_strategy("naive").build_messages(system_prompt="", question="q?", passages=[PARIS])


# ---------------------------------------------------------------- against the plain computation


@pytest.mark.slow
def test_it_matches_the_naive_prompts_logits_with_one_document_and_integer_positions(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = build_forkjoin(tokenizer, system_prompt="", question=QUESTION, passages=[NOBEL])
    ids = prompt.preamble + prompt.docs[0] + prompt.query + prompt.answer
    # The same text as the naive prompt, minus its "[1] " numbering.
    naive_text = tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": f"{INSTRUCTION}\n\nContext:\nTitle: {NOBEL.title}\n{NOBEL.text}\n\nQuestion: {QUESTION}",
            }
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert ids == tokenizer.encode(naive_text, add_special_tokens=False)
    with torch.inference_mode():
        reference = smollm2.model(input_ids=torch.tensor([ids])).logits[0, -1]
    for batching in ("flat", "batch"):
        prepared = prepare(smollm2, [NOBEL], positions="integer", top_k=None, query_batching=batching)
        torch.testing.assert_close(prepared.first_logits, reference, atol=2e-4, rtol=1e-5)
        assert prepared.next_position == len(ids)


@pytest.mark.slow
def test_it_serves_cached_document_kv_equal_to_a_fresh_forward(smollm2, passages, tmp_path):
    store = KVStore(tmp_path)
    cold = prepare(smollm2, passages, store)
    assert cold.cached_tokens == 0
    prompt = build_forkjoin(smollm2.tokenizer, system_prompt="", question=QUESTION, passages=passages)
    pkey = preamble_key(smollm2, prompt.preamble)
    n_p = len(prompt.preamble)
    for passage, doc_ids, text in zip(passages, prompt.docs, prompt.doc_texts, strict=True):
        cached = store.get(document_key(pkey, passage, text))
        assert cached is not None and cached.token_ids == doc_ids
        fresh = forward(smollm2, prompt.preamble + doc_ids).cache
        for i, layer in enumerate(fresh.layers):
            torch.testing.assert_close(cached.keys[i], layer.keys[0, :, n_p:], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(cached.values[i], layer.values[0, :, n_p:], atol=1e-4, rtol=1e-4)
    warm = prepare(smollm2, passages, store)
    assert warm.cached_tokens == n_p + sum(len(d) for d in prompt.docs)
    assert warm.prompt_tokens == cold.prompt_tokens
    torch.testing.assert_close(warm.first_logits, cold.first_logits, atol=1e-6, rtol=0)
    assert warm.scores == pytest.approx(cold.scores, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["flat", "batch"])
def test_it_leaves_a_paths_saliency_score_unchanged_when_another_document_changes(smollm2, batching):
    # Integer positions: with equalization H depends on every path's length, by design.
    before = prepare(smollm2, [NOBEL, PARIS, EIFFEL], positions="integer", query_batching=batching)
    after = prepare(smollm2, [NOBEL, BERLIN, EIFFEL], positions="integer", query_batching=batching)
    for i in (0, 2):
        assert after.scores[i] == pytest.approx(before.scores[i], abs=1e-4)
        assert after.query_logprobs[i] == pytest.approx(before.query_logprobs[i], abs=1e-4)
    assert after.scores[1] != pytest.approx(before.scores[1], abs=1e-3)


@pytest.mark.slow
def test_it_computes_the_same_paths_flat_or_batched(smollm2, passages):
    flat = prepare(smollm2, passages, query_batching="flat")
    batch = prepare(smollm2, passages, query_batching="batch")
    assert batch.scores == pytest.approx(flat.scores, abs=1e-4)
    torch.testing.assert_close(batch.first_logits, flat.first_logits, atol=2e-4, rtol=1e-5)


@pytest.mark.slow
def test_it_prunes_to_the_top_k_paths_and_drops_the_others_kv(smollm2, passages):
    prepared = prepare(smollm2, passages, positions="integer", top_k=1)
    best = max(range(3), key=lambda i: prepared.scores[i])
    assert prepared.kept == [best]
    # The gold passage wins on this question: its question is the most likely continuation.
    assert passages[best] == NOBEL
    assert prepared.scores == pytest.approx(
        [q + d for q, d in zip(prepared.query_logprobs, prepared.doc_logprobs, strict=True)]
    )
    # Pruned paths are gone from the answer's cache: the same logits as a prompt without them.
    alone = prepare(smollm2, [passages[best]], positions="integer", top_k=None)
    torch.testing.assert_close(prepared.first_logits, alone.first_logits, atol=2e-4, rtol=1e-5)
    n_p, n_a = len(alone_prompt(smollm2, [passages[best]]).preamble), len(alone_prompt(smollm2, []).answer)
    assert prepared.cache.get_seq_length() == alone.cache.get_seq_length() > n_p + n_a

    two = prepare(smollm2, passages, positions="integer", top_k=2)
    assert two.kept == keep_top_k(two.scores, 2) and len(two.kept) == 2 and best in two.kept


def alone_prompt(model, passages):
    return build_forkjoin(model.tokenizer, system_prompt="", question=QUESTION, passages=passages or [PARIS])


# ---------------------------------------------------------------- float positions and RoPE


@pytest.mark.slow
def test_it_feeds_float_position_ids_through_llama_rope(smollm2):
    ids = alone_prompt(smollm2, [NOBEL]).preamble
    positions = torch.arange(len(ids))[None]
    as_int = forward(smollm2, ids, positions).logits
    as_float = forward(smollm2, ids, positions.float()).logits
    torch.testing.assert_close(as_float, as_int, atol=1e-6, rtol=0)
    # Fractional positions are used as such, not truncated to integers.
    halves = forward(smollm2, ids, positions.float() * 0.5).logits
    truncated = forward(smollm2, ids, (positions.float() * 0.5).long()).logits
    assert (halves - truncated).abs().max() > 1e-2


@pytest.mark.slow
def test_it_equals_integer_positions_when_all_paths_have_the_same_length(smollm2):
    pair = [PARIS_SHORT, ROME]
    prompt = build_forkjoin(smollm2.tokenizer, system_prompt="", question=QUESTION, passages=pair)
    assert len(prompt.docs[0]) == len(prompt.docs[1])  # so H equals that length: spacing 1
    equalized = prepare(smollm2, pair, positions="equalized", top_k=None)
    integer = prepare(smollm2, pair, positions="integer", top_k=None)
    torch.testing.assert_close(equalized.first_logits, integer.first_logits, atol=1e-5, rtol=0)
    assert equalized.scores == pytest.approx(integer.scores, abs=1e-6)


@pytest.mark.slow
def test_it_rerotates_cached_keys_to_the_keys_computed_at_shifted_positions(smollm2):
    prompt = alone_prompt(smollm2, [EIFFEL])
    ids = prompt.preamble + prompt.docs[0]
    positions = torch.arange(len(ids), dtype=torch.float32)[None]
    shift = 3.25
    base = forward(smollm2, ids, positions).cache
    shifted = forward(smollm2, ids, positions + shift).cache
    rotary = rotary_of(smollm2.model)
    delta = torch.full((len(ids),), shift)
    for layer_base, layer_shifted in zip(base.layers, shifted.layers, strict=True):
        moved = rerotate_keys(rotary, layer_base.keys[0], delta)
        torch.testing.assert_close(moved, layer_shifted.keys[0], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(layer_base.values, layer_shifted.values, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- generation, caps, billing


@pytest.mark.slow
def test_it_streams_the_answer_and_bills_cache_hits_as_cached_tokens(smollm2, passages, tmp_path):
    store = KVStore(tmp_path)
    strategy = SuperpositionPrompting()
    pieces: list[str] = []
    cold = strategy.generate(model=smollm2, system_prompt="", question=QUESTION, passages=passages,
                             max_output_tokens=24, wall_time_limit_s=120, on_token=pieces.append, kv_store=store)
    assert "".join(pieces) == cold.text and "Röntgen" in cold.text
    prompt = build_forkjoin(smollm2.tokenizer, system_prompt="", question=QUESTION, passages=passages)
    context = len(prompt.preamble) + sum(len(d) for d in prompt.docs)
    assert cold.prompt_tokens == context + 3 * len(prompt.query) + len(prompt.answer)
    assert cold.cached_tokens == 0 and cold.fresh_prompt_tokens == cold.prompt_tokens
    assert 1 <= cold.completion_tokens <= 24 and cold.finish_reason in ("stop", "length")
    assert cold.compute_s > 0 and cold.gpu_s == 0 and cold.model == "smollm2-135m-instruct"
    assert cold.kept == keep_top_k(cold.scores, 2)

    warm = strategy.generate(model=smollm2, system_prompt="", question=QUESTION, passages=passages,
                             max_output_tokens=24, wall_time_limit_s=120, kv_store=store)
    assert warm.text == cold.text and warm.completion_tokens == cold.completion_tokens
    assert warm.cached_tokens == context
    assert warm.fresh_prompt_tokens == 3 * len(prompt.query) + len(prompt.answer)
    assert warm.timings["doc_compute_s"] == 0 < cold.timings["doc_compute_s"]


@pytest.mark.slow
def test_it_stops_at_the_output_cap_the_deadline_and_a_failing_callback(smollm2, passages):
    strategy = SuperpositionPrompting()
    kwargs = {"model": smollm2, "system_prompt": "", "question": QUESTION, "passages": passages}
    capped = strategy.generate(**kwargs, max_output_tokens=3, wall_time_limit_s=120)
    assert capped.finish_reason == "length" and capped.completion_tokens == 3
    late = strategy.generate(**kwargs, max_output_tokens=32, wall_time_limit_s=1e-6)
    # The deadline is checked between the documents' prefills too: it stops there, before any token.
    assert late.finish_reason == "time_limit" and late.completion_tokens == 0
    assert 0 < late.prompt_tokens < capped.prompt_tokens

    def hang_up(piece: str) -> None:
        raise ConnectionError("client went away")

    broken = strategy.generate(**kwargs, max_output_tokens=32, wall_time_limit_s=120, on_token=hang_up)
    assert broken.finish_reason == "error" and "client went away" in broken.error
    assert broken.completion_tokens >= 1 and broken.prompt_tokens == capped.prompt_tokens
    with pytest.raises(ValueError):
        strategy.generate(**kwargs, max_output_tokens=0, wall_time_limit_s=1)


@pytest.mark.slow
def test_it_recomputes_a_corrupt_cached_document(smollm2, passages, tmp_path):
    store = KVStore(tmp_path)
    cold = prepare(smollm2, passages, store)
    prompt = build_forkjoin(smollm2.tokenizer, system_prompt="", question=QUESTION, passages=passages)
    path = store.path_for(document_key(preamble_key(smollm2, prompt.preamble), EIFFEL, prompt.doc_texts[2]))
    path.write_bytes(path.read_bytes()[:1000])  # a partial file
    again = prepare(smollm2, passages, store)
    assert again.cached_tokens == cold.prompt_tokens - len(prompt.docs[2]) - 3 * len(prompt.query) - len(prompt.answer)
    torch.testing.assert_close(again.first_logits, cold.first_logits, atol=1e-6, rtol=0)
    assert store.get(document_key(preamble_key(smollm2, prompt.preamble), EIFFEL, prompt.doc_texts[2])) is not None


# ---------------------------------------------------------------- answer modes after pruning


def naive_logits_over(model, prompt, order):
    """Logits of the plain prompt P + d_a + d_b + ... + q + A, one forward, integer positions."""
    ids = prompt.preamble + [t for i in order for t in prompt.docs[i]] + prompt.query + prompt.answer
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids])).logits[0, -1], len(ids)


@pytest.mark.slow
def test_it_answers_exactly_like_naive_rag_over_the_kept_documents_in_recompute_mode(smollm2, passages, tmp_path):
    store = KVStore(tmp_path / "kv")
    prepare(smollm2, passages, store=store, top_k=2)  # fills the store: both calls below are warm
    prepared = prepare(smollm2, passages, store=store, top_k=2, answer_mode="recompute")
    # Best-scored document last, right before the question.
    order = sorted(prepared.kept, key=lambda i: prepared.scores[i])
    reference, length = naive_logits_over(smollm2, alone_prompt(smollm2, passages), order)
    torch.testing.assert_close(prepared.first_logits, reference, atol=2e-4, rtol=1e-5)
    assert prepared.next_position == length
    # The same paths are kept as in the superposed answer; only the answer node differs.
    superposed = prepare(smollm2, passages, store=store, top_k=2)
    assert superposed.kept == prepared.kept and superposed.scores == pytest.approx(prepared.scores)
    # Billing: the kept documents and the question are computed again for the answer.
    prompt = alone_prompt(smollm2, passages)
    recomputed = sum(len(prompt.docs[i]) for i in prepared.kept) + len(prompt.query)
    assert prepared.prompt_tokens == superposed.prompt_tokens + recomputed
    assert prepared.cached_tokens == superposed.cached_tokens > 0


@pytest.mark.slow
def test_it_lays_the_kept_cached_paths_one_after_another_in_sequential_mode(smollm2, passages):
    """With integer positions and one kept path, sequential == superposed == the naive prompt;
    with two, the cache holds P, then each kept (d, q) at consecutive positions, best last."""
    one = prepare(smollm2, passages, positions="integer", top_k=1, answer_mode="sequential")
    best = one.kept[0]
    reference, length = naive_logits_over(smollm2, alone_prompt(smollm2, passages), [best])
    torch.testing.assert_close(one.first_logits, reference, atol=2e-4, rtol=1e-5)
    assert one.next_position == length

    two = prepare(smollm2, passages, top_k=2, answer_mode="sequential")
    prompt = alone_prompt(smollm2, passages)
    span = sum(len(prompt.docs[i]) + len(prompt.query) for i in two.kept)
    assert two.next_position == len(prompt.preamble) + span + len(prompt.answer)
    assert two.cache.get_seq_length() == len(prompt.preamble) + span + len(prompt.answer)
    # Different from superposed (the paths no longer share positions), same scores and choice.
    superposed = prepare(smollm2, passages, top_k=2)
    assert two.kept == superposed.kept
    assert not torch.allclose(two.first_logits, superposed.first_logits, atol=1e-3)


def test_it_refuses_an_unknown_answer_mode(smollm2, passages):
    with pytest.raises(ValueError, match="answer_mode"):
        prepare(smollm2, passages, top_k=2, answer_mode="bogus")


def test_it_builds_a_configured_strategy_from_a_pipelines_plain_options():
    from workers.prompting import strategy_config

    strategy = get_strategy("superposition", {"top_k": 3, "answer_mode": "recompute", "positions": "integer"})
    assert strategy.config == SuperpositionConfig(top_k=3, answer_mode="recompute", positions="integer")
    assert get_strategy("superposition").config == SuperpositionConfig()
    assert strategy_config("naive", {}) is None
    with pytest.raises(ValueError, match="takes no options"):
        strategy_config("naive", {"top_k": 2})
    with pytest.raises(ValueError, match=r"unknown options .* topk .*valid: .*top_k"):
        strategy_config("superposition", {"topk": 2})
    for bad in ({"top_k": 0}, {"top_k": "2"}, {"positions": "diagonal"}, {"doc_weight": -1}, {"answer_mode": "x"}):
        with pytest.raises(ValueError):
            strategy_config("superposition", bad)
