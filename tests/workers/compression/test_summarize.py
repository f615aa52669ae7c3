"""Abstractive summaries: budgets per chunk, fallbacks, model accounting (EchoTarget double + real SmolLM2)."""

from __future__ import annotations

import pytest

from workers.compression import CompressionCache, Resources, get_method
from workers.compression.text import allocate
from workers.runtime.meter import EchoTarget

from .conftest import count_words

QUERY = "When was the Eiffel Tower completed?"


def summarize(bow, reply, **params):
    """Per-chunk shares ∝ size (TCRA-LLM's setting) unless a test asks otherwise: easy to check by hand.

    The echo double's canned reply is no summary of any chunk: the faithfulness check is off
    unless a test turns it on.
    """
    params.setdefault("allocation", "size")
    params.setdefault("min_key_recall", 0.0)
    return get_method("summarize", resources=Resources(generator=EchoTarget(reply=reply), embedder=bow), **params)


def test_it_uses_a_short_summary_per_chunk_and_reports_the_model_tokens(bow, passages):
    result = summarize(bow, "completed in 1889").compress(
        query=QUERY, passages=passages, target=0.5, count_tokens=count_words
    )
    budget = round(0.5 * result.tokens_before)
    # The first two chunks are summarized; their short summaries leave room that passes on to
    # the last chunk, which then fits whole (no model call for it).
    assert [p.text for p in result.passages] == ["completed in 1889"] * 2 + [passages[2].text]
    assert result.tokens_after == 6 + count_words(passages[2].text) <= budget
    # No original characters survive verbatim in an abstractive summary.
    assert result.kept_spans == {11: [], 12: [], 13: [(0, len(passages[2].text))]}
    assert result.model_completion_tokens == 3 * 2
    assert result.model_prompt_tokens > sum(count_words(p.text) for p in passages[:2])  # chunk + question + instruction
    assert result.model == "echo" and result.compute_s > 0


def test_what_a_short_summary_leaves_of_its_share_goes_to_the_next_chunk(bow, passages):
    seen = []
    method = summarize(bow, "completed in 1889")
    original = method._summarize

    def spy(query, passage, budget, shown, options=None):
        seen.append((passage.chunk_id, budget))
        return original(query, passage, budget, shown, options)

    method._summarize = spy
    counts = [count_words(p.text) for p in passages]
    method.compress(query=QUERY, passages=passages, target=0.3, count_tokens=count_words)
    budget = round(0.3 * sum(counts))
    first, second = allocate(budget, counts)[:2]
    assert seen[0] == (11, first)
    # The second chunk's share is taken from the budget less the 3 tokens used, not from the plan.
    assert seen[1][0] == 12 and seen[1][1] == allocate(budget - 3, counts[1:])[0] > second


def test_it_passes_on_a_share_too_small_to_say_anything(bow, passages):
    # 5 tokens for three chunks: no chunk is cut to a word or two; the budget goes to one chunk.
    result = summarize(bow, "").compress(query=QUERY, passages=passages, target=5, count_tokens=count_words)
    assert result.tokens_after <= 5
    assert len(result.passages) == 1 and count_words(result.passages[0].text) >= 4, result.passages


def test_it_caps_each_summary_at_the_chunks_share_of_the_budget(bow, passages):
    long_reply = " ".join(["word"] * 500)
    result = summarize(bow, long_reply).compress(query=QUERY, passages=passages, target=0.5, count_tokens=count_words)
    budget = round(0.5 * result.tokens_before)
    counts = [count_words(p.text) for p in passages]
    # Every summary is cut at its share, less the last word (maybe a fragment at the cap), which
    # then passes on to the next chunk's share.
    first = allocate(budget, counts)[0]
    second = allocate(budget - (first - 1), counts[1:])[0]
    assert [count_words(p.text) for p in result.passages][:2] == [first - 1, second - 1]
    assert result.tokens_after <= budget


@pytest.mark.parametrize("reply", ["", "tok " * 200])
def test_it_falls_back_to_extractive_when_the_summary_is_empty_or_too_long(bow, passages, reply):
    def count_double(text):  # the pipeline's tokenizer counts twice what the summarizer's does
        return 2 * count_words(text)

    result = summarize(bow, reply).compress(query=QUERY, passages=passages, target=0.5, count_tokens=count_double)
    assert result.passages and result.tokens_after <= round(0.5 * result.tokens_before)
    by_id = {p.chunk_id: p for p in passages}
    for out in result.passages:
        spans = result.kept_spans[out.chunk_id]
        assert spans and out.text == " ".join(by_id[out.chunk_id].text[a:b] for a, b in spans)


def test_it_keeps_a_chunk_whole_at_target_one_and_never_calls_the_model(bow, passages):
    result = summarize(bow, "x").compress(query=QUERY, passages=passages, target=1.0, count_tokens=count_words)
    assert result.passages == passages and result.model_prompt_tokens == 0


def test_it_caches_generic_summaries_per_chunk_and_budget(bow, passages, tmp_path):
    resources = Resources(generator=EchoTarget(reply="a short summary"), embedder=bow, cache=CompressionCache(tmp_path))
    method = get_method("summarize", resources=resources, query_aware=False)
    first = method.compress(query=QUERY, passages=passages, target=0.5, count_tokens=count_words)
    second = method.compress(query="other", passages=passages, target=0.5, count_tokens=count_words)
    assert first.model_prompt_tokens > 0 and second.model_prompt_tokens == 0
    assert second.passages == first.passages


def test_it_gives_the_budget_to_the_relevant_chunks_with_relevance_allocation(bow, passages):
    query = "When was the Eiffel Tower completed? Eiffel Tower tower completed"
    method = summarize(bow, "completed in 1889", allocation="relevance", temperature=0.05)
    result = method.compress(query=query, passages=passages, target=0.4, count_tokens=count_words)
    # The cheese chunk shares no word with the question: it gets (almost) nothing and no model call.
    assert 13 not in [p.chunk_id for p in result.passages if p.text == "completed in 1889"]
    assert result.passages[0].chunk_id == 11
    assert result.tokens_after <= round(0.4 * result.tokens_before)


def test_a_chunk_its_share_could_keep_whole_still_competes_sentence_by_sentence(bow, passages):
    # The first chunk is the question's best (weight 1) and its share covers it; the Paris chunk
    # gets 6 words, too few for a summary. Kept whole, the tower chunk's "It is 330 metres tall."
    # would take the room of the Olympics sentence, which answers the question; pooled, the
    # extractive choice over both chunks trades the one for the other.
    query = "When did the Eiffel Tower city Paris host the Summer Olympics?"
    method = get_method("summarize", resources=Resources(generator=EchoTarget(reply=""), embedder=bow))
    result = method.compress(query=query, passages=passages[:2], target=0.7, count_tokens=count_words)
    kept = " ".join(p.text for p in result.passages)
    assert "Paris hosted the Summer Olympics in 1900, 1924 and 2024." in kept
    assert "It is 330 metres tall." not in kept
    assert result.tokens_after <= round(0.7 * result.tokens_before)
    assert result.model_prompt_tokens == 0  # no share was worth a summary
    # pool_whole=False, the behaviour before: the tower chunk whole, the Olympics sentence lost.
    before = get_method(
        "summarize", resources=Resources(generator=EchoTarget(reply=""), embedder=bow), pool_whole=False
    )
    kept = " ".join(p.text for p in before.compress(query=query, passages=passages[:2], target=0.7,
                                                     count_tokens=count_words).passages)
    assert kept.startswith(passages[0].text) and "1900, 1924 and 2024." not in kept


def test_it_shows_the_summarizer_the_most_relevant_sentences_first(bow, passages):
    seen = []
    method = get_method("summarize", resources=Resources(generator=EchoTarget(reply="x y z"), embedder=bow))
    original = method._summarize

    def spy(query, passage, budget, shown, options=None):
        seen.append((passage.chunk_id, shown))
        return original(query, passage, budget, shown, options)

    method._summarize = spy
    method.compress(query="How tall is it in metres?", passages=passages[:1], target=0.5, count_tokens=count_words)
    (chunk_id, shown), = seen
    assert shown.startswith("It is 330 metres tall.")
    assert sorted(shown.split()) == sorted(passages[0].text.split())  # the same sentences, reordered


@pytest.mark.slow
def test_it_summarizes_with_the_real_smollm2_within_budget(smollm2, smollm2_count, minilm, passages):
    method = get_method("summarize", resources=Resources(generator=smollm2, embedder=minilm))
    result = method.compress(query=QUERY, passages=passages[:1], target=0.6, count_tokens=smollm2_count)
    assert 0 < result.tokens_after <= round(0.6 * result.tokens_before)
    assert result.model_prompt_tokens > 0 and result.model_completion_tokens > 0
    assert result.model == "smollm2-135m-instruct" and result.compute_s > 0


def test_it_rejects_a_summary_that_drops_the_key_sentences_names_and_numbers(bow, passages):
    eiffel = passages[:1]  # key sentence: "The tower was completed in 1889 for the World's Fair."
    faithful = summarize(bow, "Completed in 1889 for the World's Fair.", min_key_recall=0.5).compress(
        query=QUERY, passages=eiffel, target=0.5, count_tokens=count_words)
    assert faithful.passages[0].text == "Completed in 1889 for the World's Fair." and faithful.kept_spans[11] == []
    vague = summarize(bow, "A famous tower in a big city.", min_key_recall=0.5).compress(
        query=QUERY, passages=eiffel, target=0.5, count_tokens=count_words)
    # Replaced by the chunk's extractive choice: original sentences, the answer among them.
    assert vague.kept_spans[11] and "1889" in vague.passages[0].text
    assert vague.model_completion_tokens > 0  # the rejected summary was still paid for



def test_a_summary_must_keep_every_name_and_number_when_the_key_sentence_would_fit(bow):
    method = summarize(bow, "unused", min_key_recall=0.5)
    key = "Knowsley United Women lost the 1994 final to Doncaster Belles."
    query = "Who did the Doncaster Belles play in the 1994 final?"
    partial = "Knowsley United lost the final."
    assert method.faithful(query, [key], partial)  # half of the names: enough when the sentence cannot fit
    assert not method.faithful(query, [key], partial, fits=1)  # the extractive choice would keep "Women"
    assert method.faithful(query, [key], "Knowsley United Women lost the final.", fits=1)


def test_every_fact_of_the_key_sentences_that_fit_must_stay_and_half_of_the_rest():
    method = summarize(None, "unused", min_key_recall=0.5)
    query = "What Italian region does Slinzega come from?"
    keys = ["The Insubres were a Gaulish population settled in Insubria, now the region of Lombardy.",
            "They were the founders of Mediolanum (Milan)."]
    cut = "The Insubres were a Gaulish population settled in Insubria, now the region of"
    assert method.faithful(query, keys, cut)  # 4 of 6 facts
    assert not method.faithful(query, keys, cut, fits=1)  # the best sentence would fit: "Lombardy" must stay
    assert method.faithful(query, keys, "The Gaulish Insubres of Insubria lived in Lombardy.", fits=1)


@pytest.mark.parametrize("reply", ["The", "Doncaster", "the Doncaster Belles"])
def test_a_summary_of_a_word_or_of_the_questions_own_words_is_not_faithful(bow, reply):
    method = summarize(bow, "unused", min_key_recall=0.5)
    assert not method.faithful("Who did the Doncaster Belles play?", [], reply)

def test_a_rejected_summary_keeps_the_first_words_of_the_best_sentence_when_it_does_not_fit(bow, passages):
    eiffel = passages[:1]
    # 7 tokens: the best sentence (10 words, with the year) does not fit whole; the plain
    # extractive choice would be the short "It is 330 metres tall." instead.
    result = summarize(bow, "").compress(query=QUERY, passages=eiffel, target=7, count_tokens=count_words)
    assert result.passages[0].text == "The tower was completed in 1889 for"
    (a, b), = result.kept_spans[11]
    assert eiffel[0].text[a:b] == result.passages[0].text and result.tokens_after == 7


def test_rejected_summaries_share_one_extractive_choice_over_their_chunks(bow, passages):
    # Every summary is empty, so every chunk is left to the fallback: one extractive choice over
    # all of them with the whole budget, not a choice per chunk that would spend the cheese
    # chunk's share on cheese.
    result = summarize(bow, "").compress(query=QUERY, passages=passages, target=0.3, count_tokens=count_words)
    extractive = get_method("extractive", resources=Resources(embedder=bow)).compress(
        query=QUERY, passages=passages, target=float(round(0.3 * result.tokens_before)), count_tokens=count_words)
    assert result.passages == extractive.passages and result.kept_spans == extractive.kept_spans
    assert 13 not in [p.chunk_id for p in result.passages]
    assert any("1889" in p.text for p in result.passages)
    assert result.model_completion_tokens == 0 and result.model_prompt_tokens > 0  # the empty replies were paid


def test_an_accepted_summary_leaves_the_rest_of_the_budget_to_the_fallback(bow, passages):
    calls = []

    def reply_for(query, passage, budget, shown, options=None):
        calls.append(passage.chunk_id)
        text = "Completed in 1889." if passage.chunk_id == 11 else ""
        return text, 10, len(text.split()), 0.01

    method = summarize(bow, "unused")
    method._summarize = reply_for
    result = method.compress(query=QUERY, passages=passages, target=0.3, count_tokens=count_words)
    budget = round(0.3 * result.tokens_before)
    assert result.passages[0].text == "Completed in 1889." and result.kept_spans[11] == []
    rest = get_method("extractive", resources=Resources(embedder=bow)).compress(
        query=QUERY, passages=passages[1:], target=float(budget - 3), count_tokens=count_words)
    assert result.passages[1:] == rest.passages
    assert result.tokens_after <= budget
