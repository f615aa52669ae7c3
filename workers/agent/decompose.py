"""Decomposing a request into subtasks: one model call, a numbered list, parsed robustly.

A small model may answer the question instead, echo the instructions, repeat itself, or
produce nothing usable: whatever cannot be read as a short list of distinct steps falls back
to the whole request as the only subtask.
"""

from __future__ import annotations

import re

DECOMPOSE_SYSTEM = (
    "You split a task into the simple steps needed to solve it. Do not solve the steps.\n"
    "Reply only with a numbered list, one step per line, at most {max_steps} steps:\n"
    "1. <first step>\n2. <second step>\n"
    "If the task is already a single simple step, reply with just:\n1. <the task>"
)

_ITEM = re.compile(r"^\s*(?:(?:step\s*)?\d{1,2}\s*[.):\-]|[-*•])\s*(.+?)\s*$", re.IGNORECASE)
_INLINE_ITEM = re.compile(r"\s+(?=\d{1,2}[.)]\s+\S)")
_ECHO_MARKERS = ("numbered list", "one step per line", "<first step>", "<the task>", "simple steps needed")


def decompose_messages(task: str, *, max_steps: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DECOMPOSE_SYSTEM.format(max_steps=max_steps)},
        {"role": "user", "content": f"Task: {task}"},
    ]


def _normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def parse_subtasks(text: str, *, max_steps: int) -> list[str]:
    """The steps of a numbered (or bulleted) list in ``text``; [] when there is none worth keeping."""
    steps: list[str] = []
    seen: set[str] = set()
    lines: list[str] = []
    for line in (text or "").splitlines():
        # "1. first 2. second" on one line (small models do that): one item per number.
        lines += _INLINE_ITEM.split(line) if _ITEM.match(line) else [line]
    for line in lines:
        match = _ITEM.match(line)
        if not match:
            continue
        step = match.group(1).strip().strip("*").strip()
        key = _normalised(step)
        if (
            len(step) < 8
            or len(step) > 300
            or len(key.split()) < 2
            or key in seen
            or any(marker in step.lower() for marker in _ECHO_MARKERS)
        ):
            continue
        seen.add(key)
        steps.append(step)
        if len(steps) >= max_steps:
            break
    return steps


def subtasks_or_whole(text: str, *, task: str, max_steps: int) -> tuple[list[str], bool]:
    """(subtasks, fell_back): the parsed steps, or [task] when the output was junk."""
    steps = parse_subtasks(text, max_steps=max_steps)
    if not steps:
        return [task], True
    return steps, False
