"""Compression plans: the bound of a compress call, counted before it runs, never below what it then does.

Fast tests run the doubles (bag-of-words embedder, echo summarizer, whitespace tokens); the slow
ones run the real SmolLM2 and MiniLM on the shared fixtures, uncached and cached.
"""

from __future__ import annotations

import itertools
import random
import shutil

import pytest

from workers.compression import METHODS, CompressionCache, Resources, get_method
from workers.compression.plan import CompressionPlan, ModelCall, knapsack_bound
from workers.compression.summarize import MIN_SUMMARY_TOKENS, completion_cap
from workers.compression.text import sentence_spans
from workers.prompting.base import Passage
from workers.runtime.meter import EchoTarget

from .conftest import count_words

QUERY = "When was the Eiffel Tower completed?"
COUNTED = ("model_calls", "model_prompt_tokens", "model_completion_tokens", "scorer_passes", "scorer_tokens",
           "embed_calls", "embed_texts", "embed_tokens")


def planned_and_ran(method, passages, target, query=QUERY, count_tokens=count_words):
    plan = method.plan(query=query, passages=passages, target=target, count_tokens=count_tokens)
    result = method.compress(query=query, passages=passages, target=target, count_tokens=count_tokens, plan=plan)
    return plan, result


def assert_exact(plan: CompressionPlan, result) -> None:
    """An exact plan predicted the run's every count."""
    assert plan.exact
    assert len(plan.model_calls) == result.model_calls
    assert (plan.embed_calls, plan.embed_texts, plan.embed_tokens) == (
        result.embed_calls, result.embed_texts, result.embed_tokens)
    assert (plan.scorer_passes, plan.scorer_tokens) == (result.scorer_passes, result.scorer_tokens)


# ---------------------------------------------------------------------------- the bound itself


def test_the_knapsack_bound_is_never_below_the_best_choice():
    rng = random.Random(0)
    for _ in range(300):
        items = [(rng.randint(1, 20), rng.randint(0, 50)) for _ in range(rng.randint(0, 7))]
        capacity = rng.randint(0, 60)
        best = max(
            sum(v for (w, v), take in zip(items, mask, strict=True) if take)
            for mask in itertools.product([0, 1], repeat=len(items))
            if sum(w for (w, _), take in zip(items, mask, strict=True) if take) <= capacity
        )
        bound = knapsack_bound(items, capacity)
        assert best <= bound <= sum(v for _, v in items)


def test_the_knapsack_bound_leaves_out_what_cannot_fit_and_cuts_the_last_item():
    assert knapsack_bound([(10, 100), (20, 30)], 25) == 100 + 23  # 10 whole, then 15/20 of 30 (22.5), up
    assert knapsack_bound([(40, 1000), (5, 5)], 20) == 5  # 40 never fits
    assert knapsack_bound([], 10) == 0


def test_a_plan_lists_what_a_run_did_past_it():
    plan = CompressionPlan(method="summarize", model="m", model_calls=[ModelCall(100, 20)], completion_cap=15,
                           embed_calls=1, embed_texts=4, embed_tokens=40)
    from workers.compression.base import CompressedContext

    ran = CompressedContext(passages=[], tokens_before=0, tokens_after=0, model="m", model_calls=1,
                            model_prompt_tokens=100, model_completion_tokens=15, embed_calls=1, embed_texts=4,
                            embed_tokens=40)
    assert plan.prompt_tokens == 100 and plan.completion_tokens == 15
    assert plan.violations(ran) == []
    ran.model_completion_tokens, ran.embed_tokens = 16, 41
    assert plan.violations(ran) == ["model_completion_tokens: ran 16, planned 15", "embed_tokens: ran 41, planned 40"]


# ---------------------------------------------------------------------------- every method, doubles


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"surprisal_prune"}))  # a real scorer: the slow tests
@pytest.mark.parametrize("target", [0.2, 0.5, 30, 1.0])
def test_every_method_plans_at_least_what_it_then_does(bow, passages, name, target):
    resources = Resources(generator=EchoTarget(reply="The tower was completed in 1889 for the fair"), embedder=bow)
    method = get_method(name, resources=resources)
    plan, result = planned_and_ran(method, passages, target)
    assert plan.violations(result) == []
    assert plan.tokens_before == result.tokens_before
    if target == 1.0:
        assert plan.model_calls == [] and plan.embed_calls == 0 and result.embed_calls == 0


@pytest.mark.parametrize("params", [{}, {"title_context": False}])
def test_extractive_plans_its_encodes_exactly(bow, passages, params):
    plan, result = planned_and_ran(get_method("extractive", resources=Resources(embedder=bow), **params), passages, 0.4)
    assert_exact(plan, result)
    sentences = sum(len(sentence_spans(p.text)) for p in passages)
    assert (result.embed_calls, result.embed_texts) == (2, sentences + 1)  # the sentences, then the question
    assert len(bow.calls) == 2


@pytest.mark.parametrize("params", [{}, {"fine_keep": None}, {"query_aware": False}, {"rounds": 2},
                                    {"fine_keep": None, "rounds": 3}])
@pytest.mark.parametrize("target", [0.2, 0.5])
def test_semantic_prune_plans_at_least_its_deletion_variants(bow, passages, params, target):
    method = get_method("semantic_prune", resources=Resources(embedder=bow), **params)
    plan, result = planned_and_ran(method, passages, target)
    assert plan.violations(result) == []
    assert result.embed_texts == sum(bow.calls) and result.embed_calls == len(bow.calls)
    if plan.exact:  # every window of every sentence, once
        assert_exact(plan, result)


def test_semantic_prunes_coarse_bound_is_tighter_than_every_sentences_variants(bow, passages):
    coarse = get_method("semantic_prune", resources=Resources(embedder=bow))
    every = get_method("semantic_prune", resources=Resources(embedder=bow), fine_keep=None)
    tight = coarse.plan(query=QUERY, passages=passages, target=0.2, count_tokens=count_words)
    loose = every.plan(query=QUERY, passages=passages, target=0.2, count_tokens=count_words)
    assert not tight.exact and loose.exact
    # Budget / 0.6 tokens of sentences, not all of them (the coarse plan adds the relevance encode).
    relevance = sum(len(sentence_spans(p.text)) for p in passages) + 1
    assert tight.embed_texts - relevance < loose.embed_texts


def test_a_plan_pins_the_cache_entries_it_found(bow, passages, tmp_path):
    cache = CompressionCache(tmp_path / "cache")
    method = get_method("extractive", resources=Resources(embedder=bow, cache=cache))
    method.compress(query=QUERY, passages=passages, target=0.4, count_tokens=count_words)  # fills the cache
    plan = method.plan(query="How tall is it?", passages=passages, target=0.4, count_tokens=count_words)
    assert (plan.embed_calls, plan.embed_texts) == (1, 1)  # the question alone
    shutil.rmtree(tmp_path / "cache")  # evicted between the plan and the run
    (tmp_path / "cache").mkdir()
    calls = len(bow.calls)
    result = method.compress(query="How tall is it?", passages=passages, target=0.4, count_tokens=count_words,
                             plan=plan)
    assert bow.calls[calls:] == [1] and result.embed_texts == 1  # the run used the pinned vectors
    assert plan.violations(result) == []


def test_a_plan_runs_only_the_call_it_was_made_for(bow, passages):
    method = get_method("extractive", resources=Resources(embedder=bow))
    plan = method.plan(query=QUERY, passages=passages, target=0.4, count_tokens=count_words)
    with pytest.raises(ValueError, match="made for another compress call"):
        method.compress(query="Who designed it?", passages=passages, target=0.4, count_tokens=count_words, plan=plan)
    with pytest.raises(ValueError, match="made for another compress call"):
        method.compress(query=QUERY, passages=passages[:2], target=0.4, count_tokens=count_words, plan=plan)
    with pytest.raises(ValueError, match="made for another compress call"):
        get_method("extractive", resources=Resources(embedder=bow), mmr_lambda=0.9).compress(
            query=QUERY, passages=passages, target=0.4, count_tokens=count_words, plan=plan)


# ---------------------------------------------------------------------------- summarize, doubles


def echo_summarize(bow, reply, **params):
    params.setdefault("min_key_recall", 0.0)
    return get_method("summarize", resources=Resources(generator=EchoTarget(reply=reply), embedder=bow), **params)


def test_summarize_plans_one_capped_call_per_chunk_it_may_summarize(bow, passages):
    method = echo_summarize(bow, "completed in 1889", temperature=10.0)  # weights near 1: calls happen
    plan, result = planned_and_ran(method, passages, 0.5)
    counts = [count_words(p.text) for p in passages]
    budget = round(0.5 * sum(counts))
    # Relevance weights need the embedder: any chunk may be summarized, each capped below its size.
    assert not plan.exact and plan.model == "echo"
    assert [c.max_output_tokens for c in plan.model_calls] == [min(n - 1, budget) for n in counts]
    assert plan.completion_cap == completion_cap(budget, len(passages))
    assert plan.violations(result) == [] and 0 < result.model_calls <= len(plan.model_calls)
    # Its relevance encode (sentences + question) is exact, and the fallback reuses it.
    assert plan.embed_calls == result.embed_calls == len(bow.calls) == 2
    assert plan.embed_texts == result.embed_texts == sum(bow.calls)


def test_summarize_passes_the_planned_cap_to_the_meter(bow, passages):
    seen = []
    method = echo_summarize(bow, "word " * 200, allocation="size", relevance_order=False, query_aware=False)
    original = method._summarize

    def spy(query, passage, budget, shown, options=None):
        seen.append((passage.chunk_id, budget))
        return original(query, passage, budget, shown, options)

    method._summarize = spy
    plan, result = planned_and_ran(method, passages, 0.5)
    # Shares ∝ size are known up front: the first call and its cap are exact, its prompt too.
    first = plan.model_calls[0]
    assert seen[0] == (passages[0].chunk_id, first.max_output_tokens)
    assert all(budget <= call.max_output_tokens for (_, budget), call in zip(seen, plan.model_calls, strict=False))
    assert result.model_completion_tokens <= plan.completion_tokens
    assert plan.violations(result) == []


def test_summaries_that_write_more_than_they_leave_stop_at_the_completion_cap(bow, passages):
    def counts_a_summary_as_one_token(text):  # a pipeline tokenizer that undercounts the summaries
        return 1 if text.startswith("alpha") else count_words(text)

    reply = " ".join(f"alpha{i}" for i in range(400))
    method = echo_summarize(bow, reply, allocation="size", pool_whole=False)
    many = [Passage(chunk_id=i, title=f"T{i}", text=" ".join(f"w{i}x{k}" for k in range(200)) + ".") for i in range(6)]
    plan, result = planned_and_ran(method, many, 0.1, count_tokens=counts_a_summary_as_one_token)
    budget = 120
    # Every summary leaves 1 token of its share used, so the next share is what is left over the
    # chunks after it: 20, 24, 30, 40, 60, 119, which uncapped would write 293 tokens.
    assert result.model_calls == 6
    assert result.model_completion_tokens == completion_cap(budget, 6) == plan.completion_tokens == 120 + 6 * 16
    assert plan.violations(result) == []


def test_the_caller_sees_each_summary_call_counted_exactly_before_it_runs(bow, passages):
    method = echo_summarize(bow, "completed in 1889 for the fair", temperature=10.0)
    plan = method.plan(query=QUERY, passages=passages, target=0.5, count_tokens=count_words)
    seen = []

    def before(call):
        seen.append(call)
        return {"stop": [" for"]}  # more arguments for the meter's generate

    plan.on_model_call = before
    result = method.compress(query=QUERY, passages=passages, target=0.5, count_tokens=count_words, plan=plan)
    assert 0 < len(seen) == result.model_calls <= len(plan.model_calls)
    assert sum(call.prompt_tokens for call in seen) == result.model_prompt_tokens  # exact, per call
    assert max(call.max_output_tokens for call in seen) <= max(c.max_output_tokens for c in plan.model_calls)
    assert "completed in 1889" in [p.text for p in result.passages]  # the stop string reached the meter

    def refuse(call):
        raise RuntimeError("budget exceeded")

    again = method.plan(query=QUERY, passages=passages, target=0.5, count_tokens=count_words)
    again.on_model_call = refuse
    with pytest.raises(RuntimeError, match="budget exceeded"):
        method.compress(query=QUERY, passages=passages, target=0.5, count_tokens=count_words, plan=again)


def test_a_cached_summary_costs_no_call_in_the_plan_or_the_run(bow, passages, tmp_path):
    resources = Resources(generator=EchoTarget(reply="a short summary of it"), embedder=bow,
                          cache=CompressionCache(tmp_path))
    method = get_method("summarize", resources=resources, query_aware=False, min_key_recall=0.0)
    cold, first = planned_and_ran(method, passages, 0.5)
    assert cold.model_calls and first.model_calls > 0 and cold.violations(first) == []
    warm, second = planned_and_ran(method, passages, 0.5, query="another question")
    # Every summary is cached: the walk over the chunks is known exactly, no call in either.
    assert warm.model_calls == [] and warm.model == "" and warm.exact
    assert second.model_calls == second.model_prompt_tokens == second.model_completion_tokens == 0
    assert second.passages == first.passages
    assert_exact(warm, second)


def test_summarize_plans_the_fallbacks_encode_when_no_relevance_ran(bow, passages):
    method = echo_summarize(bow, "", query_aware=False)
    plan, result = planned_and_ran(method, passages, 0.4)
    assert plan.violations(result) == []
    assert result.embed_calls == 2  # every summary empty: the fallback's sentences and question
    assert plan.embed_texts == result.embed_texts == sum(len(sentence_spans(p.text)) for p in passages) + 1


def test_summarize_prompt_bounds_hold_for_any_sentence_order(bow):
    method = echo_summarize(bow, "x")
    target = EchoTarget()
    passage = Passage(1, "Eiffel Tower", "The tower is tall. It was built in 1889.  It is in Paris.")
    bound = method._prompt_bound(target, QUERY, passage, 20, reordered=True)
    spans = sentence_spans(passage.text)
    for order in itertools.permutations(spans):
        shown = " ".join(passage.text[a:b] for a, b in order)
        from workers.runtime.meter import count_chat_tokens

        assert count_chat_tokens(target, method._messages(QUERY, passage, shown, 14)) <= bound


# ---------------------------------------------------------------------------- the real models


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), [
    ("extractive", {}),
    ("semantic_prune", {}),
    ("semantic_prune", {"query_aware": False}),
    ("surprisal_prune", {}),
    ("surprisal_prune", {"fine_keep": None}),
    ("surprisal_prune", {"query_aware": False}),
])
@pytest.mark.parametrize("target", [0.33, 0.5])
def test_real_models_do_no_more_than_planned(smollm2, smollm2_count, minilm, passages, tmp_path, name, params, target):
    resources = Resources(generator=smollm2, scorer=smollm2, embedder=minilm, cache=CompressionCache(tmp_path))
    runs = []
    for query in (QUERY, "Who designed it?"):  # cold, then with what the first call cached
        method = get_method(name, resources=resources, **params)
        plan, result = planned_and_ran(method, passages, target, query=query, count_tokens=smollm2_count)
        assert plan.violations(result) == [], (query, plan, result)
        if plan.exact:
            assert_exact(plan, result)
        if name == "surprisal_prune":
            assert plan.scorer == "smollm2-135m-instruct" and result.model_prompt_tokens == result.scorer_tokens
        runs.append(result)
    cold, warm = runs
    if name != "surprisal_prune" or params.get("fine_keep", 0.6) and params.get("query_aware", True):
        assert cold.embed_tokens > cold.embed_texts > 0  # MiniLM's word pieces, [CLS] and [SEP] included
    assert warm.embed_texts <= cold.embed_texts and warm.scorer_tokens <= cold.scorer_tokens


@pytest.mark.slow
def test_extractive_counts_minilms_tokens_exactly(minilm, smollm2_count, passages):
    method = get_method("extractive", resources=Resources(embedder=minilm))
    plan, result = planned_and_ran(method, passages, 0.33, count_tokens=smollm2_count)
    assert_exact(plan, result)
    texts = [f"{p.title}. {p.text[a:b]}" for p in passages for a, b in sentence_spans(p.text)] + [QUERY]
    assert result.embed_tokens == sum(len(minilm.tokenizer(t)["input_ids"]) for t in texts)


@pytest.mark.slow
def test_real_summaries_stay_within_the_plan_uncached_and_cached(smollm2, smollm2_count, minilm, passages, tmp_path):
    # The pipeline's setting (query-aware, relevance weights): a bound, not exact.
    aware = get_method("summarize", resources=Resources(generator=smollm2, embedder=minilm))
    plan = aware.plan(query=QUERY, passages=passages[:2], target=0.5, count_tokens=smollm2_count)
    seen = []
    plan.on_model_call = seen.append  # returns None: no more arguments for the meter
    result = aware.compress(query=QUERY, passages=passages[:2], target=0.5, count_tokens=smollm2_count, plan=plan)
    assert plan.violations(result) == [] and result.model_calls == len(seen) > 0
    assert sum(call.prompt_tokens for call in seen) == result.model_prompt_tokens  # the chat template, exactly
    assert result.model_completion_tokens <= sum(call.max_output_tokens for call in seen)
    assert plan.model == result.model == "smollm2-135m-instruct"
    assert all(call.max_output_tokens >= MIN_SUMMARY_TOKENS for call in plan.model_calls)
    # Generic summaries, cached: the first run's calls are bounded, the second makes none.
    resources = Resources(generator=smollm2, embedder=minilm, cache=CompressionCache(tmp_path))
    generic = get_method("summarize", resources=resources, query_aware=False)
    cold, first = planned_and_ran(generic, passages[:2], 0.5, count_tokens=smollm2_count)
    assert cold.violations(first) == [] and first.model_calls > 0
    assert cold.model_calls[0].prompt_tokens == first.model_prompt_tokens or first.model_calls > 1
    warm, second = planned_and_ran(generic, passages[:2], 0.5, query="Who designed it?", count_tokens=smollm2_count)
    assert warm.model_calls == [] and second.model_calls == second.model_prompt_tokens == 0
    assert warm.violations(second) == []


@pytest.mark.slow
def test_summary_prompt_bounds_hold_for_every_sentence_order_with_smollm2(smollm2, minilm, passages):
    from workers.runtime.meter import count_chat_tokens

    method = get_method("summarize", resources=Resources(generator=smollm2, embedder=minilm))
    for passage in passages:
        bound = method._prompt_bound(smollm2, QUERY, passage, 40, reordered=True)
        spans = sentence_spans(passage.text)
        for order in itertools.permutations(spans):
            shown = " ".join(passage.text[a:b] for a, b in order)
            for words in (3, 27, 28):  # caps at or below 40
                assert count_chat_tokens(smollm2, method._messages(QUERY, passage, shown, words)) <= bound
