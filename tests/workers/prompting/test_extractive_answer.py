"""The extractive answer: the best sentence of the passages, quoted with its [n], checked against the plain score."""

from __future__ import annotations

import numpy as np
import pytest

from tests.workers.prompting.conftest import EIFFEL, NOBEL, PARIS, QUESTION
from workers.prompting import get_strategy, strategy_config
from workers.prompting.base import Passage
from workers.prompting.extractive_answer import (
    ExtractiveAnswerConfig,
    ExtractiveAnswerPrompting,
    candidates,
    score_reference,
    score_sentences,
)

TOWER = Passage(31, "Eiffel Tower", "The tower is a landmark of Paris. It was completed in 1889 for the World's Fair. "
                "Gustave Eiffel's company built it.")
MUSEUM = Passage(32, "Louvre", "The Louvre is the world's most-visited museum. It opened to the public in 1793. "
                 "It holds the Mona Lisa.")


def _same_vector(texts: list[str]) -> np.ndarray:
    """An encoder that finds every text equally similar: only the cheap signals then decide."""
    return np.tile(np.eye(1, 8, dtype=np.float32), (len(texts), 1))


def test_the_vectorised_score_equals_the_plain_reference():
    passages = [NOBEL, TOWER, MUSEUM, PARIS]
    cands = candidates(passages)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(cands) + 1, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for question in ("when was the tower completed", "how many museums are in paris", "who built the tower",
                     "the louvre"):
        for config in (ExtractiveAnswerConfig(),
                       ExtractiveAnswerConfig(passage_weight=0.0, lexical_weight=1.0, rank_weight=0.5)):
            fast = score_sentences(question, passages, cands, vectors[1:], vectors[0], config)
            plain = score_reference(question, passages, cands, vectors[1:].tolist(), vectors[0].tolist(), config)
            np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-6)


def test_a_when_question_prefers_the_sentence_with_a_date():
    strategy = ExtractiveAnswerPrompting(ExtractiveAnswerConfig(rank_weight=0.0, passage_weight=0.0))
    result = strategy.answer(question="When was the tower completed?", passages=[TOWER], encode=_same_vector)
    assert result.text == "It was completed in 1889 for the World's Fair. [1]"
    assert result.finish_reason == "extractive"
    # With every text equally similar and no cue, the rank prior alone puts the first passage first.
    result = ExtractiveAnswerPrompting().answer(question="Tell me something", passages=[MUSEUM, TOWER],
                                                encode=_same_vector)
    assert result.text.endswith("[1]") and result.sentences[0].passage == 0


def test_it_quotes_several_sentences_best_first_each_with_its_citation():
    strategy = get_strategy("extractive_answer", {"sentences": 2, "rank_weight": 0.0, "passage_weight": 0.0})
    result = strategy.answer(question="When did the Louvre open and when was the tower completed?",
                             passages=[TOWER, MUSEUM], encode=_same_vector)
    # Both hold a date; "completed" is a question word the first one also holds.
    assert result.text == "It was completed in 1889 for the World's Fair. [1] It opened to the public in 1793. [2]"
    assert [s.passage for s in result.sentences] == [0, 1]
    assert result.sentences[0].score > result.sentences[1].score


def test_it_encodes_exactly_the_texts_it_announces_in_one_call():
    strategy = ExtractiveAnswerPrompting()
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(list(texts))
        return _same_vector(texts)

    result = strategy.answer(question=QUESTION, passages=[NOBEL, EIFFEL], encode=encode)
    assert seen == [strategy.embedding_inputs(QUESTION, [NOBEL, EIFFEL])]
    assert seen[0][0] == QUESTION and seen[0][1].startswith("List of Nobel laureates in Physics. The first")
    assert result.embedded_texts == len(seen[0]) == 1 + len(candidates([NOBEL, EIFFEL]))


def test_nothing_to_quote_gives_an_empty_answer_without_encoding():
    def encode(texts: list[str]) -> np.ndarray:
        raise AssertionError("nothing to encode")

    result = ExtractiveAnswerPrompting().answer(question=QUESTION, passages=[Passage(1, "Empty", "  ")],
                                                encode=encode)
    assert result.text == "" and result.sentences == [] and result.embedded_texts == 0


def test_short_fragments_are_quoted_only_when_nothing_else_is_there():
    notes = Passage(5, "Röntgen", "Notes. Wilhelm Röntgen won the first Nobel Prize in Physics.")
    result = ExtractiveAnswerPrompting(ExtractiveAnswerConfig(lexical_weight=0.0, answer_type_weight=0.0)).answer(
        question=QUESTION, passages=[notes], encode=_same_vector)
    assert result.text == "Wilhelm Röntgen won the first Nobel Prize in Physics. [1]"


def test_impossible_options_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="sentences must be an integer from 1 to 5"):
        strategy_config("extractive_answer", {"sentences": 0})
    with pytest.raises(ValueError, match="lexical_weight must be a number >= 0"):
        strategy_config("extractive_answer", {"lexical_weight": -1})
    with pytest.raises(ValueError, match="valid: .*answer_type_weight"):
        strategy_config("extractive_answer", {"top_k": 2})


@pytest.mark.slow
def test_with_minilm_it_quotes_the_sentence_that_answers(embedder):
    strategy = get_strategy("extractive_answer")
    result = strategy.answer(question=QUESTION, passages=[PARIS, EIFFEL, NOBEL], encode=embedder.encode)
    assert result.text == f"{NOBEL.text} [3]"
    result = strategy.answer(question="When was the Eiffel Tower completed?", passages=[MUSEUM, TOWER, PARIS],
                             encode=embedder.encode)
    assert result.text == "It was completed in 1889 for the World's Fair. [2]"
