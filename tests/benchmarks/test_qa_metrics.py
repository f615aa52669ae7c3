
from benchmarks.qa_metrics import contained, exact_match, f1_score, normalize_answer


def test_it_normalises_like_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"


def test_exact_match_and_f1_take_the_best_gold_answer():
    assert exact_match("the Eiffel tower", ["Eiffel Tower", "tour Eiffel"]) == 1.0
    # "the" is dropped: 6 predicted tokens, 2 shared -> precision 1/3, recall 1 -> F1 0.5
    assert f1_score("It is the Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.5
    assert f1_score("no overlap", ["Eiffel Tower"]) == 0.0


def test_contained_matches_whole_words_only():
    assert contained("The answer is Wilhelm Conrad Röntgen, of Germany.", ["Wilhelm Conrad Röntgen"]) == 1.0
    assert contained("It was in 1901.", ["190"]) == 0.0


def test_the_benchmarks_score_with_the_engines_functions():
    """One definition: the evaluation jobs (workers.rag.answer_metrics) score exactly as the benchmarks do."""
    from benchmarks import qa_metrics
    from workers.rag import answer_metrics

    for name in ("contained", "exact_match", "f1_score", "normalize_answer"):
        assert getattr(qa_metrics, name) is getattr(answer_metrics, name)
