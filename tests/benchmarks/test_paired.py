"""The paired comparison behind the benchmarks' `vs_truncation`: discordant pairs and the exact sign test."""


import pytest

from benchmarks.paired import paired_vs, sign_test


def test_won_and_lost_count_only_the_questions_where_the_two_disagree():
    baseline = {"a": True, "b": True, "c": False, "d": False, "e": True}
    method = {"a": True, "b": False, "c": True, "d": True, "f": True}  # "e" not run, "f" not in baseline
    vs = paired_vs(baseline, method)
    assert (vs["won"], vs["lost"]) == (2, 1)  # c, d won; b lost; a agrees; e and f unpaired


def test_sign_test_matches_the_binomial_tails():
    assert sign_test(0, 0) == 1.0
    assert sign_test(11, 11) == 1.0
    # 10 against 0: both tails of Binomial(10, 1/2) at the extremes, 2 / 1024.
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(0, 10) == sign_test(10, 0)
    # 8 against 2: 2 * (1 + 10 + 45) / 1024 = 0.109375.
    assert sign_test(8, 2) == pytest.approx(0.109375)
    # One question apart is never evidence.
    assert sign_test(12, 11) == 1.0
