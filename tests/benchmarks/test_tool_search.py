from benchmarks.tool_search import score, solved


def test_it_scores_recall_over_the_union_of_subtask_rankings():
    rankings = [[["a", "b", "c"]], [["x", "y"], ["q", "z", "w"]]]
    golds = [["b"], ["z", "y"]]
    scores = score(rankings, golds, any_of=False)
    assert scores["recall@1"] == 0.0
    assert scores["recall@5"] == 1.0
    assert scores["mrr"] == round((1 / 2 + 1 / 2) / 2, 4)
    assert score([[["a", "b"]]], [["b", "a"]], any_of=True)["recall@1"] == 1.0


def test_it_reads_numbers_and_text_from_answers():
    assert solved("The area is 40 square meters.", [40])
    assert solved("about 43.99 cm", [43.98, 44])
    assert solved("The sum is 3,628,855.", [3628855, "3,628,855"])
    assert not solved("It is 41.", [40])
    assert solved("False, it is not prime", ["false", "False"])
