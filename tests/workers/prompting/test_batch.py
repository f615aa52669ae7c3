"""Batch prompting: packing k questions, parsing numbered answers robustly, splitting a call's cost exactly."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.prompting.base import Passage
from workers.prompting.batch import (
    BatchItem,
    allocate,
    build_batch_messages,
    parse_batch_answers,
    reference_answers,
    shared_tokens_split,
)
from workers.prompting.naive import NaivePrompting

QUANTUM = Decimal("0.0000000001")
ITEMS = [
    BatchItem("Who wrote Hamlet?", [Passage(1, "Hamlet", "Hamlet is a tragedy by William Shakespeare.")]),
    BatchItem("What is the capital of France?", [Passage(2, "Paris", "Paris is the capital of France."),
                                                  Passage(3, "Lyon", "Lyon is a city in France.")]),
]


def test_it_packs_each_question_with_its_own_numbered_passages():
    (user,) = build_batch_messages(system_prompt="", items=ITEMS)
    text = user["content"]
    assert "Context 1:\n[1] Title: Hamlet" in text and "Q1: Who wrote Hamlet?" in text
    assert "Context 2:\n[1] Title: Paris" in text and "[2] Title: Lyon" in text and "Q2: What is the capital" in text
    assert text.index("Q1:") < text.index("Context 2:") and "A1:" in text


def test_one_question_is_the_naive_prompt_itself():
    item = ITEMS[0]
    assert build_batch_messages(system_prompt="Be brief.", items=[item]) == NaivePrompting().build_messages(
        system_prompt="Be brief.", question=item.question, passages=list(item.passages))


def test_the_reference_reply_parses_back_to_its_answers():
    answers = ["William Shakespeare", "Paris [1]", "1889", "a: b", "42"]
    assert parse_batch_answers(reference_answers(answers), 5) == answers


@pytest.mark.parametrize(("reply", "expected"), [
    ("Here you go:\nA1: Shakespeare\nA2: Paris", ["Shakespeare", "Paris"]),  # preamble ignored
    ("A2: Paris\nA1: Shakespeare", [None, None]),  # out of order: the numbering is not trusted
    ("A1: Shakespeare A2: Paris", ["Shakespeare", "Paris"]),  # two on one line, each marked
    ("**A1:** Shakespeare\n**A2**: Paris", ["Shakespeare", "Paris"]),  # markdown
    ("A1: Shakespeare", ["Shakespeare", None]),  # missing → fallback
    ("A1: Shakespeare and Paris", ["Shakespeare and Paris", None]),  # merged into one → the other falls back
    ("A1: Shakespeare\nA1: Marlowe\nA2: Paris", [None, None]),  # numbered twice: A2 may be Q3's → fallback
    ("A1: Shakespeare\nA2: Paris\nA2: Lyon", ["Shakespeare", None]),  # a repeat at the end
    ("A0: Marlowe\nA1: Shakespeare\nA2: Paris", [None, None]),  # out of range first: nothing in sequence
    ("A1: Shakespeare\nA3: Rome\nA2: Paris", ["Shakespeare", None]),  # a gap: A2 after it is not Q2's
    ("A1:\nA2: Paris", [None, "Paris"]),  # empty → fallback
    ("Shakespeare, Paris", [None, None]),  # no numbers at all → every question falls back
    ("A1: Shakespeare\nA3: Paris", ["Shakespeare", None]),  # a number outside 1..k is nobody's
    ("A1: Shakespeare\nA2: Paris\nA3: Rome", ["Shakespeare", "Paris"]),  # an extra answer after the k
    ("", [None, None]),
    ("A1: 1\nA2: 2", [None, None]),  # the numbers echoed back, not answers
    ("A1: <short answer to Q1>\nA2: Paris", [None, "Paris"]),  # the template's placeholder
    ("A1: Paris\nA2: Paris", [None, None]),  # one answer to every question: not told apart
])
def test_it_parses_what_it_can_and_marks_the_rest_for_the_fallback(reply, expected):
    assert parse_batch_answers(reply, 2) == expected


# ----------------------------------------------------------------------------- properties (hypothesis)

# Answer text that cannot hold a marker ("a"/"A" never appears) nor be an echo of the template.
_TEXT = st.text(alphabet="bcdefghijklmnopqrstuvwxyz BCDEFXYZ", min_size=1, max_size=20).map(str.strip).filter(
    lambda t: t != "")


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=2, max_size=8, unique=True))
def test_property_a_reply_in_the_format_parses_back_exactly(answers):
    assert parse_batch_answers(reference_answers(answers), len(answers)) == answers


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=2, max_value=8).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(min_value=0, max_value=k + 2), _TEXT), max_size=k + 3),
    st.sampled_from(["\n", " ", "\n\n", "\n- "]))))
def test_property_a_question_only_ever_gets_its_own_numbered_answer(case):
    """Whatever the numbers (repeats, gaps, out of range, out of order), an accepted answer for question n
    is the text the reply numbered n, at the n-th place, with every number before it in sequence."""
    k, numbered, separator = case
    reply = separator.join(f"A{number}: {text}" for number, text in numbered)
    parsed = parse_batch_answers(reply, k)
    assert len(parsed) == k
    numbers = [number for number, _ in numbered]
    for n, answer in enumerate(parsed, start=1):
        if answer is None:
            continue
        assert len(numbers) >= n and numbers[:n] == list(range(1, n + 1)), (reply, parsed)
        assert numbers.count(n) == 1 and answer == numbered[n - 1][1], (reply, parsed)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=2, max_size=8, unique=True).flatmap(
    lambda answers: st.tuples(st.just(answers), st.permutations(range(len(answers))))))
def test_property_a_shuffled_reply_is_trusted_only_up_to_its_first_misplaced_answer(case):
    answers, order = case
    reply = "\n".join(f"A{i + 1}: {answers[i]}" for i in order)
    parsed = parse_batch_answers(reply, len(answers))
    in_place = next((p for p, i in enumerate(order) if p != i), len(order))
    expected = [answers[i] if i < in_place else None for i in range(len(answers))]
    assert parsed == expected, reply


def test_a_word_ending_in_a_digit_is_not_a_marker():
    assert parse_batch_answers("A1: DNA2: no\nA2: yes", 2) == ["DNA2: no", "yes"]


def test_allocation_sums_exactly_and_gives_remainders_deterministically():
    assert allocate(Decimal("0.0000000010"), [1, 1, 1], QUANTUM) == [Decimal("4E-10"), Decimal("3E-10"),
                                                                      Decimal("3E-10")]
    assert allocate(10, [0, 0]) == [5, 5]
    assert allocate(7, [5, 2]) == [5, 2]
    rng = random.Random(7)
    for _ in range(500):
        total = Decimal(rng.randrange(0, 10**12)) * QUANTUM
        weights = [rng.randrange(0, 5000) for _ in range(rng.randrange(1, 9))]
        shares = allocate(total, weights, QUANTUM)
        assert sum(shares) == total and all(s >= 0 for s in shares)
        assert shares == allocate(total, weights, QUANTUM)  # deterministic


def test_allocation_refuses_a_total_finer_than_its_quantum():
    with pytest.raises(ValueError, match="multiple"):
        allocate(Decimal("0.00000000001"), [1], QUANTUM)


def test_shared_tokens_are_split_evenly_and_the_split_sums_to_the_call():
    assert shared_tokens_split(call_prompt_tokens=100, own_tokens=[30, 20, 10]) == [44, 33, 23]
    assert sum(shared_tokens_split(call_prompt_tokens=50, own_tokens=[30, 30])) == 50  # counted apart: longer
