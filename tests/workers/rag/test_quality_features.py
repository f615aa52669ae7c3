"""The answer-level candidate signals of the support score: span presence, entity overlap, length, and the
contrastive grounding gain (workers.rag.quality, workers.rag.grounding)."""

from __future__ import annotations

import math

import pytest

from workers.rag.grounding import grounding_gain, question_only_messages
from workers.rag.quality import (
    answer_signals,
    entities,
    normalize_text,
    question_entity_overlap,
    short_answer,
    span_in_passages,
)

PASSAGES = ["The Nobel Prize in Physics 1901 was awarded to Wilhelm Conrad Röntgen, for the discovery of X-rays.",
            "Marie Curie won the prize in 1903."]


def test_normalize_text_is_squads():
    assert normalize_text("The  Beatles' [2] first album!") == "beatles first album"


def test_a_short_answer_found_in_a_passage_is_a_span():
    assert span_in_passages("Wilhelm Conrad Röntgen [1].", PASSAGES) == 1.0
    assert span_in_passages("the discovery of X-rays", PASSAGES) == 1.0


def test_a_span_must_match_whole_words_and_be_short():
    assert span_in_passages("Röntgen Wilhelm", PASSAGES) == 0.0  # not in that order
    assert span_in_passages("Curi", PASSAGES) == 0.0  # part of a word
    long = "Prize in Physics 1901 went to Wilhelm Conrad Röntgen"  # 9 words, no copula: too long to be a span
    assert span_in_passages(long, PASSAGES) == 0.0
    found = "Nobel Prize in Physics 1901 was awarded to Wilhelm Conrad Röntgen for the discovery"
    assert span_in_passages(found, PASSAGES) == 1.0  # its predicate "awarded to ... discovery" (7 normalised words)
    assert span_in_passages(found, PASSAGES, max_words=6) == 0.0
    assert span_in_passages("", PASSAGES) == 0.0


@pytest.mark.parametrize(("answer", "span"), [
    ("The answer is: 14 [2].", "14"),
    ("The answer to this question is: Donald Trump. He won in 2016.", "Donald Trump"),
    ("The President of the United States is Donald Trump.", "Donald Trump"),
    ("The main mineral in lithium batteries is lithium.", "lithium"),
    ("Lithium.", "Lithium"),
    ("The answer is:", None),
    ("The first Nobel Prize in Physics was awarded to John Bardeen, Walter Brattain and William Shockley", None),
])
def test_the_short_answer_is_what_follows_the_answer_is_or_the_predicate(answer, span):
    found = short_answer(answer)
    assert (answer[found[0]:found[1]] if found else None) == span


def test_only_the_first_sentence_is_the_span():
    assert span_in_passages("Marie Curie. Wilhelm Conrad Röntgen.", PASSAGES) == 1.0
    assert span_in_passages("Albert Einstein. Marie Curie.", PASSAGES) == 0.0


def test_entities_are_capitalised_words_and_numbers_less_stopwords():
    assert entities("The prize went to Marie Curie in 1903 [2].") == {"prize", "marie", "curie", "1903"} - {"prize"}


def test_entity_overlap_is_the_share_of_the_answers_names_the_question_names():
    question = "Who won the Nobel Prize in Physics in 1901?"
    assert question_entity_overlap(question, "Wilhelm Conrad Röntgen") == 0.0
    assert question_entity_overlap(question, "The Nobel Prize in Physics") == 1.0
    assert question_entity_overlap(question, "Röntgen won the Nobel Prize") == pytest.approx(2 / 3)
    assert question_entity_overlap(question, "he did") == 0.0  # no entity


def test_answer_signals_carries_the_new_signals():
    signals = answer_signals(question="Who won in 1901?", answer="Wilhelm Conrad Röntgen [1]", sentences=[],
                             token_logprobs=[-0.5, -1.5], passages=PASSAGES, question_only_logprobs=[-3.0, -1.0])
    assert signals["span"] == 1.0
    assert signals["words"] == 3.0
    assert signals["grounding_gain"] == pytest.approx(-1.0 - (-2.0))
    assert signals["entity_overlap"] == 0.0
    unknown = answer_signals(question="q", answer="a", sentences=[], token_logprobs=[-0.5])
    assert unknown["grounding_gain"] is None


def test_grounding_gain_is_the_difference_of_means_with_clipping():
    assert grounding_gain([-0.1, -0.3], [-2.0, -4.0, -0.0]) == pytest.approx(-0.2 + 2.0)
    assert grounding_gain([-math.inf], [-1.0]) == pytest.approx(-100.0 + 1.0)
    assert grounding_gain(None, [-1.0]) is None
    assert grounding_gain([-1.0], []) is None


def test_the_question_only_prompt_has_no_passages():
    assert question_only_messages("Who?") == [{"role": "user", "content": "Who?"}]
    assert question_only_messages("Who?", "Be brief.")[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.slow
def test_teacher_forcing_reproduces_the_decode_loops_log_probabilities(smollm2, monkeypatch):
    """The question-only prefill scores a greedy answer to the question-only prompt exactly as the decode loop
    recorded it (same model, same prompt): the plain reference for the contrast's second term."""
    from workers.rag.grounding import question_only_logprobs
    from workers.runtime.meter import generate

    # fp32 decode steps (the prefill's own weights): the CPU default int4-weight moves them by up to 0.015.
    monkeypatch.setenv("PARSIMONY_LOCAL_LM_DTYPE", "fp32")
    question = "What is the capital of France?"
    result = generate(target=smollm2, messages=question_only_messages(question), max_output_tokens=12,
                      wall_time_limit_s=60)
    scored = question_only_logprobs(smollm2, question=question, answer=result.text,
                                    stopped=result.finish_reason == "stop")
    assert len(scored.logprobs) == len(result.token_logprobs)
    assert scored.logprobs == pytest.approx(result.token_logprobs, abs=2e-3)
    assert scored.prompt_tokens > len(scored.logprobs)
    assert scored.compute_s > 0
    # With the passages' prompt the same answer is scored differently: a gain near 0 for the answer the
    # model gives without them anyway.
    assert grounding_gain(result.token_logprobs, scored.logprobs) == pytest.approx(0.0, abs=2e-3)
