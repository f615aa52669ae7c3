"""Merging the compression benchmark's per-question log lines across parts and --only reruns."""

from collections import defaultdict
from pathlib import Path

from benchmarks.compression_merge import read_log, summary


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\nsome other output\n")
    return str(path)


def test_parts_are_placed_at_their_offsets_and_an_only_rerun_replaces_its_questions(tmp_path):
    part_a = write(tmp_path / "a.log", [
        "[none @1.0] 1/2 kept=1.00 retained=True 0.00s",
        "[none @1.0] 2/2 kept=1.00 retained=False 0.00s",  # question 1 has no answer in its context
        "[summarize @0.2] 1/2 kept=0.20 retained=False 3.00s",
        "[summarize @0.2] 2/2 kept=0.20 retained=False 5.00s",
    ])
    part_b = write(tmp_path / "b.log", [  # questions 2 and 3 (--offset 2)
        "[none @1.0] 1/2 kept=1.00 retained=True 0.00s",
        "[none @1.0] 2/2 kept=1.00 retained=True 0.00s",
        "[summarize @0.2] 1/2 kept=0.10 retained=True 1.00s",
        "[summarize @0.2] 2/2 kept=0.30 retained=False 2.00s",
    ])
    rerun = write(tmp_path / "rerun.log", [  # --only 0 3
        "[summarize @0.2] 1/2 kept=0.20 retained=True 4.00s",
        "[summarize @0.2] 2/2 kept=0.20 retained=True 4.00s",
    ])
    results = defaultdict(dict)
    read_log(part_a, lambda k: k, None, results)
    read_log(part_b, lambda k: k + 2, None, results)
    read_log(rerun, lambda k: [0, 3][k], 2, results)
    (line,) = summary(results)
    # Questions 0 and 3 kept by the rerun, 2 by part b, 1 has no answer: 3 of 3. Kept shares
    # 0.2, 0.2, 0.1, 0.2 (cut 0.825); seconds 4, 5, 1, 4 (p50 4).
    assert line.startswith("summarize @0.2: n=4 cut=0.825 retained 3/3 = 100.0% p50=4.00s")
    assert line.endswith("missed=[]")


def test_a_log_holding_two_runs_is_split_by_their_question_counts(tmp_path):
    log = write(tmp_path / "chained.log", [
        "[truncation @0.5] 1/3 kept=0.50 retained=True 0.00s",
        "[truncation @0.5] 2/3 kept=0.50 retained=False 0.00s",
        "[truncation @0.5] 3/3 kept=0.50 retained=True 0.00s",
        "[truncation @0.5] 1/1 kept=0.50 retained=True 0.00s",  # a second run of 1 question
    ])
    results = defaultdict(dict)
    read_log(log, lambda k: k + 10, 3, results)
    assert sorted(results[("truncation", "0.5")]) == [10, 11, 12]
    assert "missed=[11]" in summary(results)[0]


def test_a_method_is_compared_question_by_question_with_truncation_at_its_target(tmp_path):
    log = write(tmp_path / "run.log", [
        "[none @1.0] 1/3 kept=1.00 retained=True 0.00s",
        "[none @1.0] 2/3 kept=1.00 retained=True 0.00s",
        "[none @1.0] 3/3 kept=1.00 retained=False 0.00s",  # no answer: left out of the pairs
        "[truncation @0.2] 1/3 kept=0.20 retained=True 0.00s",
        "[truncation @0.2] 2/3 kept=0.20 retained=False 0.00s",
        "[truncation @0.2] 3/3 kept=0.20 retained=False 0.00s",
        "[extractive @0.2] 1/3 kept=0.20 retained=False 0.10s",
        "[extractive @0.2] 2/3 kept=0.20 retained=True 0.10s",
        "[extractive @0.2] 3/3 kept=0.20 retained=True 0.10s",
    ])
    results = defaultdict(dict)
    read_log(log, lambda k: k, None, results)
    extractive, truncation = summary(results)
    assert "retained 1/2 = 50.0% p50=0.10s vs truncation +1 -1 p=1.000 missed=[0]" in extractive
    assert "vs truncation" not in truncation
