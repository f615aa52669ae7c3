"""Decomposing a request into subtasks: one model call, a numbered list, parsed robustly.

A small model may answer the question instead, echo the instructions, repeat itself, or
produce nothing usable: whatever cannot be read as a short list of distinct steps falls back
to the whole request as the only subtask.
"""

from __future__ import annotations

import re

DECOMPOSE_SYSTEM = (
    "Split the task into the simple steps needed to solve it. Reply only with a numbered list, "
    "one step per line, at most {max_steps} steps. Do not solve the steps."
)
# Worked examples as chat turns: small models copy a demonstrated format far more reliably
# than one described with placeholders (which they echo back verbatim).
DECOMPOSE_EXAMPLES = (
    ("Find the area of a square with side 4 m, then double it.",
     "1. Calculate the area of a square with side 4 m\n2. Double the area"),
    ("What is 12 divided by 3?", "1. Divide 12 by 3"),
)

_ITEM = re.compile(r"^\s*(?:(?:step\s*)?\d{1,2}\s*[.):\-]|[-*•])\s*(.+?)\s*$", re.IGNORECASE)
_INLINE_ITEM = re.compile(r"\s+(?=\d{1,2}[.)]\s+\S)")
_PLACEHOLDER = re.compile(r"<[^<>]{0,40}>")
_ECHO_MARKERS = ("numbered list", "one step per line", "simple steps needed")
_STOPWORDS = frozenset(
    "the a an and or of to in on for with by from then that this what which is are be it its their there "
    "find calculate compute determine what's value number result step steps task".split()
)


def decompose_messages(task: str, *, max_steps: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": DECOMPOSE_SYSTEM.format(max_steps=max_steps)}]
    for example, steps in DECOMPOSE_EXAMPLES:
        messages += [{"role": "user", "content": f"Task: {example}"}, {"role": "assistant", "content": steps}]
    messages.append({"role": "user", "content": f"Task: {task}"})
    return messages


def _content_words(text: str) -> set[str]:
    words = (w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS and (len(w) > 3 or w.isdigit()))
    return {w[:-1] if len(w) > 4 and w.endswith("s") else w for w in words}  # plurals match singulars


def _normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def parse_subtasks(text: str, *, max_steps: int, task: str | None = None) -> list[str]:
    """The steps of a numbered (or bulleted) list in ``text``; [] when there is none worth keeping.

    Dropped: placeholders ("<second step>"), echoed instructions, repeats, fragments, and, when
    ``task`` is given, steps that share no content word with it (a small model's invented task).
    """
    task_words = _content_words(task) if task else None
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
            or _PLACEHOLDER.search(step)
            or any(marker in step.lower() for marker in _ECHO_MARKERS)
            or (task_words and not (_content_words(step) & task_words))
        ):
            continue
        seen.add(key)
        steps.append(step)
        if len(steps) >= max_steps:
            break
    return steps


def subtasks_or_whole(text: str, *, task: str, max_steps: int, context: str = "") -> tuple[list[str], bool]:
    """(subtasks, fell_back): the parsed steps, or [task] when the output was junk.

    ``context`` (the original request, when ``task`` is a subtask of it) widens the words a
    step may share with its task.
    """
    steps = parse_subtasks(text, max_steps=max_steps, task=f"{context} {task}".strip())
    if not steps:
        return [task], True
    return steps, False
