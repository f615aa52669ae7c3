"""Extractive summarization: MiniLM (here a bag-of-words double) similarity, MMR, original order."""

from __future__ import annotations

import numpy as np
import pytest

from workers.compression import Resources, get_method
from workers.compression.text import sentence_spans
from workers.prompting.base import Passage

from .conftest import count_words

QUERY = "When was the Eiffel Tower completed?"


def extractive(bow, **params):
    return get_method("extractive", resources=Resources(embedder=bow), **params)


def assert_spans_index_the_original(passages, result):
    by_id = {p.chunk_id: p for p in passages}
    for out in result.passages:
        spans = result.kept_spans[out.chunk_id]
        original = by_id[out.chunk_id].text
        assert spans == sorted(spans)
        assert out.text == " ".join(original[a:b] for a, b in spans)


@pytest.mark.parametrize("target", [1.0, 10_000])
def test_it_keeps_everything_when_the_target_allows_it(bow, passages, target):
    result = extractive(bow).compress(query=QUERY, passages=passages, target=target, count_tokens=count_words)
    assert result.passages == passages
    assert result.tokens_after == result.tokens_before == sum(count_words(p.text) for p in passages)
    assert result.kept_spans == {p.chunk_id: [(0, len(p.text))] for p in passages}


@pytest.mark.parametrize("target", [0.2, 0.33, 0.5, 25])
def test_it_stays_within_the_budget_and_its_spans_index_the_original(bow, passages, target):
    result = extractive(bow).compress(query=QUERY, passages=passages, target=target, count_tokens=count_words)
    budget = round(target * result.tokens_before) if target <= 1 else target
    assert 0 < result.tokens_after <= budget
    assert result.tokens_after == sum(count_words(p.text) for p in result.passages)
    assert_spans_index_the_original(passages, result)


def test_it_matches_a_plain_top_k_by_cosine_without_mmr_or_context(bow, passages):
    result = extractive(bow, mmr_lambda=1.0, passage_weight=0.0, title_context=False).compress(
        query=QUERY, passages=passages, target=0.4, count_tokens=count_words
    )
    # Reference: rank every sentence by cosine to the query, take greedily what fits.
    sentences = [(p.chunk_id, (a, b), p.text[a:b]) for p in passages for a, b in sentence_spans(p.text)]
    vectors = bow.encode([s[2] for s in sentences])
    q = bow.encode([QUERY])[0]
    left, expected = result.tokens_before * 0.4, set()
    for i in np.argsort(-(vectors @ q), kind="stable"):
        if count_words(sentences[i][2]) <= left:
            expected.add((sentences[i][0], sentences[i][1]))
            left -= count_words(sentences[i][2])
    kept = {(cid, span) for cid, spans in result.kept_spans.items() for span in spans}
    assert kept == expected
    assert "completed in 1889" in " ".join(p.text for p in result.passages)


def test_it_drops_a_near_duplicate_sentence_with_mmr(bow):
    passages = [
        Passage(1, "A", "The tower was completed in 1889 in Paris."),
        Passage(2, "B", "In Paris the tower was completed in 1889."),
        Passage(3, "C", "The tower opened to visitors in May 1889."),
    ]
    budget = 2 * count_words(passages[0].text)
    plain = extractive(bow, mmr_lambda=1.0, passage_weight=0.0, title_context=False)
    mmr = extractive(bow, mmr_lambda=0.5, redundancy_threshold=0.8, passage_weight=0.0, title_context=False)
    query = "When was the tower in Paris completed?"
    without = plain.compress(query=query, passages=passages, target=budget, count_tokens=count_words)
    with_mmr = mmr.compress(query=query, passages=passages, target=budget, count_tokens=count_words)
    assert [p.chunk_id for p in without.passages] == [1, 2]  # both copies of the same fact
    assert [p.chunk_id for p in with_mmr.passages] in ([1, 3], [2, 3])


def test_it_keeps_the_first_words_of_the_best_sentence_when_no_sentence_fits(bow, passages):
    result = extractive(bow).compress(query=QUERY, passages=passages, target=3, count_tokens=count_words)
    assert result.tokens_after == 3
    assert_spans_index_the_original(passages, result)


def test_it_reuses_cached_sentence_vectors(bow, passages, tmp_path):
    from workers.compression import CompressionCache

    method = get_method("extractive", resources=Resources(embedder=bow, cache=CompressionCache(tmp_path)))
    first = method.compress(query=QUERY, passages=passages, target=0.3, count_tokens=count_words)
    calls = list(bow.calls)
    second = method.compress(query="How tall is it?", passages=passages, target=0.3, count_tokens=count_words)
    # The second query only embeds the query itself: every sentence vector came from the cache.
    assert bow.calls[len(calls):] == [1]
    assert first.tokens_before == second.tokens_before


@pytest.mark.slow
def test_it_keeps_the_answer_sentence_with_the_real_minilm(minilm, smollm2_count, passages):
    method = get_method("extractive", resources=Resources(embedder=minilm))
    result = method.compress(query=QUERY, passages=passages, target=0.33, count_tokens=smollm2_count)
    assert "1889" in " ".join(p.text for p in result.passages)
    assert result.tokens_after <= round(0.33 * result.tokens_before)
    assert_spans_index_the_original(passages, result)
