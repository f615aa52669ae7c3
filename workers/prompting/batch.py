"""Batch prompting (after Cheng et al. 2023, "Batch Prompting"): k questions in one prompt, numbered answers.

Plain data in, plain data out (no Django): ``build_batch_messages`` packs k questions, each with its own
retrieved passages numbered as the naive prompt numbers them, behind one shared instruction;
``parse_batch_answers`` reads the numbered answers ("A1: ...") back strictly, and returns None for every
question whose answer cannot be told apart (missing, empty, given twice, numbered out of sequence, or run
together with another's text without its own marker): the caller answers those one at a time (the
fallback).

``allocate`` splits a batch call's exact cost (or its tokens) between its questions so the shares sum to
the whole exactly, remainders given deterministically (largest remainder, then the lower index).

The plain reference to test against is ``reference_answers``: what a model that follows the format
perfectly writes, which must parse back to the same answers, and ``NaivePrompting`` for k = 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from workers.prompting.base import Passage
from workers.prompting.naive import NaivePrompting, format_context

BATCH_INSTRUCTION = (
    "Answer each question using only its own context. Reply with exactly one line per question, in order, "
    "each starting with its number: \"A1: <short answer>\", \"A2: <short answer>\", and so on. "
    "Give a short answer only."
)
MAX_BATCH_SIZE = 16


@dataclass(frozen=True)
class BatchItem:
    """One question of a batch with its own retrieved passages (best first)."""

    question: str
    passages: Sequence[Passage]


def question_block(n: int, item: BatchItem) -> str:
    """Question ``n``'s part of the packed prompt: its numbered passages, then the question itself."""
    context = format_context(list(item.passages)) if item.passages else "(no context)"
    return f"Context {n}:\n{context}\n\nQ{n}: {item.question}"


def build_batch_messages(*, system_prompt: str, items: Sequence[BatchItem]) -> list[dict]:
    """The chat messages of one packed prompt; k = 1 is the naive prompt itself (nothing to number)."""
    if not items:
        raise ValueError("a batch needs at least one question")
    if len(items) > MAX_BATCH_SIZE:
        raise ValueError(f"a batch holds at most {MAX_BATCH_SIZE} questions, not {len(items)}")
    if len(items) == 1:
        return NaivePrompting().build_messages(
            system_prompt=system_prompt, question=items[0].question, passages=list(items[0].passages)
        )
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    blocks = "\n\n".join(question_block(n, item) for n, item in enumerate(items, start=1))
    messages.append({"role": "user", "content": f"{BATCH_INSTRUCTION}\n\n{blocks}\n\nAnswers (A1 to A{len(items)}):"})
    return messages


# A marker: "A3:", "A3.", "A3)", "**A3**:", "Answer 3:", at a line start or after whitespace/punctuation.
_MARKER = re.compile(r"(?:^|(?<=[\s*>|;,.]))\**(?:A|Answer\s*)(\d{1,2})\s*\**\s*[:.)\-]\**[ \t]*",
                     re.IGNORECASE | re.MULTILINE)


def parse_batch_answers(text: str, k: int) -> list[str | None]:
    """The k answers of a batch reply; None for each that cannot be trusted to be its question's own.

    Strict: the markers must run A1, A2, A3, ... in the reply's order. Question n gets an answer only when
    its marker is the n-th one and every marker before it is numbered in sequence; from the first marker
    out of sequence (a gap, a repeat, a number going back, one outside 1..k) the rest of the reply is
    nobody's (its numbering no longer says which question an answer is for), and a number given twice
    anywhere is None. Missing or empty answers, echoes of the template, and one answer given to every
    question are None too. Text before the first marker is ignored. The caller answers each None alone
    (the fallback)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    text = text or ""
    if k == 1 and not _MARKER.search(text):
        answer = text.strip()
        return [answer or None]
    marks = list(_MARKER.finditer(text))
    numbers = [int(mark.group(1)) for mark in marks]
    answers: list[str | None] = [None] * k
    for index, (mark, number) in enumerate(zip(marks, numbers, strict=True)):
        if number != index + 1 or number > k:
            break  # out of sequence: the numbering cannot be trusted from here on
        if numbers.count(number) > 1:
            continue  # given twice (here and later): neither is surely this question's
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        answer = _clean(text[mark.end():end])
        answers[number - 1] = None if _echo(answer, k) else answer
    if k > 1 and len({a for a in answers if a is not None}) == 1 and None not in answers:
        return [None] * k  # one answer to every question: the model did not tell them apart
    return answers


_PLACEHOLDER = re.compile(r"^(?:<[^>]*>|\.{2,}|…|answer|short answer|n/?a)$", re.IGNORECASE)


def _echo(answer: str, k: int) -> bool:
    """An answer that only echoes the format: empty, a bare question number, or the template's placeholder
    ("<short answer>", "...")."""
    if not answer:
        return True
    bare = answer.strip().rstrip(".").strip()
    return (bare.isdigit() and 1 <= int(bare) <= k) or bool(_PLACEHOLDER.match(bare))


def _clean(answer: str) -> str:
    # One answer is its first line (a model that runs on writes more lines: they are not the answer).
    first = answer.strip().split("\n", 1)[0]
    return first.strip().strip("*").strip()


def reference_answers(answers: Sequence[str]) -> str:
    """What a model that follows the format exactly replies: the plain reference ``parse_batch_answers``
    must read back to ``answers``."""
    return "\n".join(f"A{n}: {answer}" for n, answer in enumerate(answers, start=1))


def allocate(total: Decimal | int, weights: Sequence[int], quantum: Decimal | int = 1) -> list:
    """Split ``total`` in proportion to ``weights`` into multiples of ``quantum`` that sum to ``total``
    exactly (``total`` must be a multiple of ``quantum``): each share floored, the units left over go one
    each to the largest remainders, ties to the lower index. Equal weights when they are all 0."""
    if not weights:
        raise ValueError("nothing to allocate to")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    exact_ints = isinstance(total, int) and isinstance(quantum, int)
    units_total = Decimal(total) / Decimal(quantum)
    if units_total != units_total.to_integral_value():
        raise ValueError(f"{total} is not a multiple of {quantum}")
    units = int(units_total)
    ws = list(weights) if any(weights) else [1] * len(weights)
    whole = sum(ws)
    floors = [units * w // whole for w in ws]
    remainders = [units * w % whole for w in ws]
    left = units - sum(floors)
    order = sorted(range(len(ws)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        floors[i] += 1
    if exact_ints:
        return [f * int(quantum) for f in floors]
    q = Decimal(quantum)
    return [(Decimal(f) * q).quantize(q, rounding=ROUND_FLOOR) for f in floors]


def shared_tokens_split(*, call_prompt_tokens: int, own_tokens: Sequence[int]) -> list[int]:
    """Each question's prompt tokens of a batch call: its own block's tokens plus its share of the shared
    ones (instruction, system prompt, chat framing) split evenly; sums to the call's exactly. Counted apart,
    the blocks may tokenize a little longer than inside the call: then the call's tokens are split in
    proportion to the blocks'."""
    shared = call_prompt_tokens - sum(own_tokens)
    if shared < 0:
        return allocate(call_prompt_tokens, list(own_tokens))
    shares = allocate(shared, [1] * len(own_tokens))
    return [own + share for own, share in zip(own_tokens, shares, strict=True)]


__all__ = [
    "BATCH_INSTRUCTION",
    "MAX_BATCH_SIZE",
    "BatchItem",
    "allocate",
    "build_batch_messages",
    "parse_batch_answers",
    "question_block",
    "reference_answers",
    "shared_tokens_split",
]
