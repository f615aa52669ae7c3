"""Per-answer quality signals on plain data: citations, support, retrieval confidence, labels, AUROC."""

from __future__ import annotations

import math

import pytest

from workers.rag.quality import (
    ABSTAIN_FINISH_REASON,
    ScoreModel,
    Thresholds,
    assess,
    auroc,
    best_hit_score,
    calibrate_threshold,
    clean_citations,
    position_mean,
    quality_label,
    question_fit,
    rescore,
    retrieval_confidence,
    sentence_scores,
    should_abstain,
    token_overlap,
)

PASSAGES = ["The Eiffel Tower was completed in 1889 in Paris.", "Paris is the capital of France."]


def test_it_removes_markers_past_the_sources_and_counts_them():
    cleaned, removed = clean_citations("It was 1889 [1][6]. Also [2, 7] and [0].", 5)
    assert cleaned == "It was 1889 [1]. Also [2] and."
    assert removed == 3


def test_it_keeps_valid_markers_untouched():
    assert clean_citations("Paris [1] [2, 3].", 3) == ("Paris [1] [2, 3].", 0)


def test_it_removes_every_marker_when_there_are_no_sources():
    assert clean_citations("From nothing [1].", 0) == ("From nothing.", 1)


def test_token_overlap_is_the_share_of_content_words_found():
    assert token_overlap("completed in 1889", PASSAGES[0]) == 1.0
    assert token_overlap("The CEO John Smith", PASSAGES[0]) == 0.0
    assert token_overlap("Towers in Paris and Rome", PASSAGES[0]) == pytest.approx(2 / 3)


def test_restating_the_question_is_not_support():
    question = "When was the Eiffel Tower completed?"
    assert token_overlap("The Eiffel Tower was completed.", PASSAGES[0], question) == 0.0
    assert token_overlap("The Eiffel Tower was completed in 1889.", PASSAGES[0], question) == 1.0
    assert token_overlap("The Eiffel Tower was completed in 1920.", PASSAGES[0], question) == 0.0
    _, quality = assess(answer="The Eiffel Tower was completed.", finish_reason="stop", passages=PASSAGES,
                        question=question)
    assert quality.label == "unsupported"


def test_a_sentence_citing_a_passage_is_scored_against_it_only():
    scored, embedded = sentence_scores("Paris is the capital of France [1].", PASSAGES)
    assert not embedded
    assert scored[0]["passage"] == 1 and scored[0]["score"] < 0.5
    scored, _ = sentence_scores("Paris is the capital of France.", PASSAGES)
    assert scored[0]["passage"] == 2 and scored[0]["score"] == 1.0


def test_the_cosine_part_comes_from_the_embedder():
    def embed(texts: list[str]) -> list[list[float]]:
        # the sentence points along x, the first passage too, the second is orthogonal
        return [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]

    scored, embedded = sentence_scores("Unrelated words here.", PASSAGES, embed=embed)
    assert embedded
    assert {k: scored[0][k] for k in ("text", "score", "passage")} == {
        "text": "Unrelated words here.", "score": 0.5, "passage": 1}
    assert scored[0]["cosines"] == [1.0, 0.0] and scored[0]["overlaps"] == [0.0, 0.0]
    # Stored components rescore under another weight (the benchmark calibrates it).
    assert rescore(scored[0], 1.0, 1.0) == 1.0 and rescore(scored[0], 0.0, 1.0) == 0.0


def test_a_refused_embedding_falls_back_to_token_overlap():
    scored, embedded = sentence_scores("Completed in 1889.", PASSAGES, embed=lambda texts: None)
    assert not embedded and scored[0]["score"] == 1.0


def test_assess_labels_a_supported_answer_grounded_and_an_invented_one_unsupported():
    cleaned, quality = assess(answer="It was completed in 1889 [1] [6].", finish_reason="stop", passages=PASSAGES)
    assert cleaned == "It was completed in 1889 [1]."
    assert quality.label == "grounded" and quality.support == 1.0 and quality.citations_removed == 1
    _, quality = assess(answer="The company's CEO, John Smith, founded it.", finish_reason="stop",
                        passages=PASSAGES)
    assert quality.label == "unsupported" and quality.support == 0.0


def test_support_by_lower_ranked_passages_counts_less_and_the_opening_sentence_most():
    scored, _ = sentence_scores("Paris is the capital of France.", PASSAGES, rank_decay=0.5)
    assert scored[0]["passage"] == 2 and scored[0]["score"] == 0.5  # the second passage: half
    assert rescore(scored[0], 0.5, 1.0) == 1.0
    assert position_mean([1.0, 0.0]) == pytest.approx(2 / 3) and position_mean([]) is None


def test_an_answer_with_nothing_to_assess_is_degenerate():
    _, quality = assess(answer="The answer is:", finish_reason="stop", passages=PASSAGES)
    assert quality.label == "degenerate" and quality.support is None


def test_half_supported_is_weak():
    _, quality = assess(answer="Paris is the capital of France. John Smith founded Microsoft.",
                        finish_reason="stop", passages=PASSAGES)
    assert quality.support == 0.5 and quality.label == "weak"


def test_degenerate_and_abstained_labels_come_from_the_finish_reason():
    _, quality = assess(answer="The answer is: The answer is:", finish_reason="repetition", passages=PASSAGES)
    assert quality.label == "degenerate" and quality.support_score == 0.0
    _, quality = assess(answer="", finish_reason="length", passages=PASSAGES)
    assert quality.label == "degenerate"
    _, quality = assess(answer="Not found.", finish_reason=ABSTAIN_FINISH_REASON, passages=[],
                        retrieval_confidence=0.02)
    assert quality.label == "abstained" and quality.retrieval_confidence == 0.02


def test_label_thresholds_are_the_calibrated_ones():
    strict = Thresholds(sentence=0.5, grounded=1.0, weak=0.9)
    assert quality_label(finish_reason="stop", answer="x", support=0.95, thresholds=strict) == "weak"
    assert quality_label(finish_reason="stop", answer="The answer is:", support=None) == "degenerate"


def test_retrieval_confidence_is_a_percentile_of_earlier_best_scores():
    reference = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert retrieval_confidence(0.45, reference) == 0.8
    assert retrieval_confidence(0.3, reference) == 0.5  # a tie counts half
    assert retrieval_confidence(0.05, reference) == 0.0
    assert retrieval_confidence(0.9, reference[:4]) is None  # too few to say
    assert should_abstain(0.0, 0.1) and not should_abstain(0.5, 0.1)
    assert not should_abstain(None, 0.1) and not should_abstain(0.0, None)


def test_best_hit_score_prefers_the_dense_cosine():
    assert best_hit_score([(0.033, {"dense": (1, 0.61), "bm25": (1, 7.0)}), (0.03, {"dense": (2, 0.7)})]) == 0.7
    assert best_hit_score([(7.5, {"bm25": (1, 7.5)}), (3.0, {})]) == 7.5
    assert best_hit_score([]) is None


def test_auroc_counts_ties_half_and_matches_hand_computed_cases():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    assert auroc([0.9, 0.3, 0.5, 0.1], [True, True, False, False]) == 0.75
    assert auroc([0.9, 0.1], [True, True]) is None


def test_calibrate_threshold_picks_the_best_youden_cut():
    scores = [0.1, 0.2, 0.35, 0.6, 0.7, 0.9]
    positives = [False, False, False, True, True, True]
    assert calibrate_threshold(scores, positives) == 0.6


def test_the_models_confidence_is_the_mean_and_least_token_log_probability():
    _, quality = assess(answer="It was completed in 1889 [1].", finish_reason="stop", passages=PASSAGES,
                        token_logprobs=[-0.5, -1.5, float("-inf"), -0.25])
    # -inf (a masked token) counts as the floor -100.
    assert quality.answer_logprob_mean == pytest.approx((-0.5 - 1.5 - 100 - 0.25) / 4)
    assert quality.answer_logprob_min == -100.0 and quality.token_logprobs == [-0.5, -1.5, -100.0, -0.25]
    _, quality = assess(answer="It was completed in 1889 [1].", finish_reason="stop", passages=PASSAGES)
    assert quality.answer_logprob_mean is None and quality.answer_logprob_min is None and quality.token_logprobs == []


@pytest.mark.parametrize(("question", "answer", "fit"), [
    ("Which band formed first, Duran Duran or The Fratellis?", "Duran Duran formed first [1].", 1.0),
    ("Which band formed first, Duran Duran or The Fratellis?", "The Fratellis formed after Duran Duran.", 1.0),
    ("Which band formed first, Duran Duran or The Fratellis?", "The band formed in 1978.", 0.0),
    ("Are the Sleepers located north or south of the Kancamagus Highway?", "South of it.", 1.0),
    ("Are both Superdrag and Collective Soul rock bands?", "Yes, both are rock bands.", 1.0),
    ("Are both Superdrag and Collective Soul rock bands?", "Superdrag is an American band.", 0.0),
    ("Who wrote Hamlet?", "Shakespeare.", None),
])
def test_question_fit_checks_the_answers_form_against_the_questions(question, answer, fit):
    assert question_fit(question, answer) == fit


def test_the_support_score_is_the_logistic_models_probability():
    model = ScoreModel(intercept=-1.0, evidence=3.0, logprob=2.0, misfit=-1.5, logprob_default=-0.8)
    z = -1.0 + 3.0 * 0.6 + 2.0 * -0.5 - 1.5 * 1
    assert model.score(evidence=0.6, logprob_mean=-0.5, fit=0.0) == pytest.approx(1 / (1 + math.exp(-z)))
    z_unknown = -1.0 + 3.0 * 0.6 + 2.0 * -0.8  # no log-probability: the default; no form to check: no misfit
    assert model.score(evidence=0.6, logprob_mean=None, fit=None) == pytest.approx(1 / (1 + math.exp(-z_unknown)))
    assert model.score(evidence=0.6, logprob_mean=None, fit=1.0) == model.score(evidence=0.6, logprob_mean=None,
                                                                                fit=None)


def test_assess_stores_the_signals_and_the_models_score():
    model = ScoreModel(intercept=-1.0, evidence=3.0, logprob=2.0, misfit=-1.5, logprob_default=-0.8)
    _, quality = assess(answer="It was completed in 1889 [1].", finish_reason="stop", passages=PASSAGES,
                        question="When was the tower completed?", token_logprobs=[-0.2, -0.4], score_model=model)
    expected = model.score(evidence=quality.evidence, logprob_mean=-0.3, fit=None)
    assert quality.support_score == pytest.approx(expected, abs=1e-4) and quality.question_fit is None
    assert quality.evidence == position_mean([s["score"] for s in quality.sentences])


def test_a_low_support_score_lowers_the_label():
    cuts = Thresholds(score_grounded=0.5, score_weak=0.2)
    assert quality_label(finish_reason="stop", answer="x", support=1.0, thresholds=cuts, score=0.6) == "grounded"
    assert quality_label(finish_reason="stop", answer="x", support=1.0, thresholds=cuts, score=0.4) == "weak"
    assert quality_label(finish_reason="stop", answer="x", support=1.0, thresholds=cuts, score=0.1) == "unsupported"
    assert quality_label(finish_reason="stop", answer="x", support=0.0, thresholds=cuts, score=0.9) == "unsupported"
