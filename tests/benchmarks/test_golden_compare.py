"""The golden-output diff ignores measured timings and costs and reports every other change by path."""

from __future__ import annotations

from benchmarks.golden_compare import differences, without_measurements


def test_it_drops_timings_and_costs_but_keeps_outputs():
    run = {"answer": "Paris", "latency_ms": 120, "cost": "0.0001", "steps": [{"tool": "add", "seconds": 1.5}]}
    assert without_measurements(run) == {"answer": "Paris", "steps": [{"tool": "add"}]}


def test_identical_outputs_with_other_timings_have_no_differences():
    before = {"naive": [{"answer": "Paris", "prompt_tokens": 10, "wall_s": 1.0}]}
    after = {"naive": [{"answer": "Paris", "prompt_tokens": 10, "wall_s": 9.0}]}
    assert differences(without_measurements(before), without_measurements(after)) == []


def test_it_names_each_changed_value_missing_key_and_length():
    before = {"naive": [{"answer": "Paris", "ledger": [["generate", 10, 5]]}], "agent": []}
    after = {"naive": [{"answer": "Lyon", "ledger": [["generate", 10, 6]]}, {"answer": "x"}]}
    found = differences(before, after)
    assert ".agent: only before" in found
    assert ".naive: 1 items != 2" in found
    assert ".naive[0].answer: 'Paris' != 'Lyon'" in found
    assert ".naive[0].ledger[0][2]: 5 != 6" in found
