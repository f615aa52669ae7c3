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


# Cosine alone: no retrieval-rank prior, lexical overlap, answer typing, lead bonus or title hop.
COSINE_ONLY = {"rank_weight": 0.0, "lexical_weight": 0.0, "answer_type_weight": 0.0, "lead_weight": 0.0,
               "hop_weight": 0.0}


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
    result = extractive(bow, mmr_lambda=1.0, passage_weight=0.0, title_context=False, **COSINE_ONLY).compress(
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
    plain = extractive(bow, mmr_lambda=1.0, passage_weight=0.0, title_context=False, **COSINE_ONLY)
    mmr = extractive(bow, mmr_lambda=0.5, redundancy_threshold=0.8, passage_weight=0.0, title_context=False,
                     **COSINE_ONLY)
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


def test_the_rank_prior_follows_the_dcg_discount_of_each_sentences_passage():
    from workers.compression.extractive import rank_prior

    np.testing.assert_allclose(rank_prior([2, 1, 3]), [0, 0, -1, -np.log2(3), -np.log2(3), -np.log2(3)])


def test_between_equally_similar_sentences_it_keeps_the_one_the_retriever_ranked_higher(bow):
    # The same sentence in two passages: cosine ties; the retrieval order (best first) decides.
    passages = [
        Passage(7, "", "Filler words here about nothing. The tower was completed in 1889."),
        Passage(3, "", "The tower was completed in 1889. Filler words here about nothing."),
    ]
    budget = count_words("The tower was completed in 1889.")
    query = "When was the tower completed?"
    for order in (passages, passages[::-1]):
        result = extractive(
            bow, passage_weight=0.0, title_context=False, **{**COSINE_ONLY, "rank_weight": 0.2}
        ).compress(query=query, passages=order, target=budget, count_tokens=count_words)
        assert [p.chunk_id for p in result.passages] == [order[0].chunk_id]


def test_lexical_overlap_weighs_the_rare_query_words_by_idf():
    from workers.compression.extractive import lexical_overlap

    sentences = ["Calipari coaches the team.", "The team won the game.", "The team lost the game.", "Nothing here."]
    scores = lexical_overlap("Who coaches the Kentucky team, Calipari?", sentences)
    assert scores[0] == scores.max() and scores[0] > scores[1]
    assert scores[1] == pytest.approx(scores[2]) and scores[2] > scores[3] == 0
    assert 0 <= scores.min() and scores.max() <= 1


@pytest.mark.parametrize(("question", "kind"), [
    ("when did britain set up the east india company", "date"),
    ("In what year was the tower completed?", "date"),
    ("how many people live in Naples", "number"),
    ("who sings the pokemon theme song", "name"),
    ("where will the next olympics be held", "name"),
    ("what do the 3 dots mean in math", None),
])
def test_it_reads_the_expected_answer_type_from_the_wh_phrase(question, kind):
    from workers.compression.extractive import expected_answer_type

    assert expected_answer_type(question) == kind


def test_answer_type_matching_marks_the_sentences_that_could_hold_the_answer():
    from workers.compression.extractive import answer_type_match

    sentences = ["It received a charter on 31 December 1600.", "It traded in the Indies.", "Trade grew in the 1700s."]
    assert answer_type_match("When was the company founded?", sentences).tolist() == [1.0, 0.0, 1.0]
    names = ["The song was sung by Jason Paige.", "The theme song was popular.", "Pokemon fans loved the theme song."]
    # "Pokemon" is the question's own word, not a candidate answer.
    assert answer_type_match("Who sang the Pokemon theme song?", names).tolist() == [1.0, 0.0, 0.0]
    assert answer_type_match("What do the dots mean?", sentences).tolist() == [0.0, 0.0, 0.0]


def test_title_links_name_the_other_passages_a_sentence_spells_out_that_the_question_does_not():
    from workers.compression.extractive import title_links

    passages = [Passage(1, "Ralf D. Bode", ""), Passage(2, "Coal Miner's Daughter (film)", ""),
                Passage(3, "Loretta Lynn", ""), Passage(4, "Ralf", "")]
    sentences = ["Ralf D. Bode shot \"Coal Miner's Daughter\" about Loretta Lynn.",  # passage 1
                 "coal miner's daughter is a film.",  # passage 2: other capitals, not the title
                 "Loretta Lynnette sang."]  # passage 3: a longer word, not the title
    links = title_links("Ralf D. Bode shot which film?", passages, sentences, [0, 1, 2])
    # Not its own passage, not "Ralf D. Bode" or "Ralf" (the question names them), the film
    # without its "(film)" disambiguation.
    assert links == [{1, 2}, set(), set()]


def test_a_chosen_sentence_that_names_another_passage_pulls_that_passage_in_the_second_hop(bow):
    # HotpotQA's bridge questions: the answer's passage shares no word with the question; the
    # first hop's sentence names it. Without the hop the off-topic look-alike wins the budget.
    passages = [
        Passage(
            1,
            "Walchelin de Ferriers",
            "Walchelin de Ferriers was principal captain of King Richard I of England.",
        ),
        Passage(2, "Erchinoald", "Erchinoald was a kin of a mother of a king."),
        Passage(3, "Richard I of England", "His parents were Henry II and Eleanor of Aquitaine."),
    ]
    query = "Who is the mother of the king that Walchelin de Ferriers was principal captain to?"
    budget = count_words(passages[0].text) + count_words(passages[1].text)  # room for one of 2, 3 after 1

    def kept(hop: float) -> list[int]:
        method = extractive(
            bow, passage_weight=0.0, title_context=False, mmr_lambda=1.0, **{**COSINE_ONLY, "hop_weight": hop}
        )
        return [p.chunk_id for p in method.compress(query=query, passages=passages, target=budget,
                                                    count_tokens=count_words).passages]

    assert kept(0.0) == [1, 2]
    assert kept(0.5) == [1, 3]


def test_a_best_sentence_longer_than_the_budget_keeps_its_first_words_not_lesser_sentences(bow):
    # NQ "who are the characters in yo gabba gabba": one long sentence names them all; skipping
    # it for being too long left the budget to an unrelated short sentence.
    passages = [
        Passage(1, "", "The characters of the show are Muno, Foofa, Brobee, Toodee and Plex, hosted by a DJ."),
        Passage(2, "", "A fictional lawyer appeared in many episodes."),
    ]
    query = "Who are the characters of the show?"
    budget = 8  # the long sentence has 16 words, the other 7

    def kept(**params) -> str:
        result = extractive(bow, **params).compress(
            query=query, passages=passages, target=budget, count_tokens=count_words
        )
        assert result.tokens_after <= budget
        return " ".join(p.text for p in result.passages)

    assert kept() == "The characters of the show are Muno, Foofa,"
    assert kept(cut_best=False) == "A fictional lawyer appeared in many episodes."
