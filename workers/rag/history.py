"""A conversation's history for a follow-up question, on plain data (no Django).

``history_fit`` keeps the newest turns (a user message and the assistant's answer, whole) whose tokens
fit the pipeline's ``history_token_budget`` and drops the older ones: a turn is never cut in half, and
nothing is summarised (a summary would be a model call per follow-up; dropping costs nothing and its
effect is shown: the turns and tokens dropped are recorded on the run).

``retrieval_query`` is what a follow-up retrieves with: the previous user question and this one,
concatenated. A rewrite ("what does *it* cost" → "what does the Pro plan cost") would be one more
metered model call before every follow-up, and the small local model rewrites unreliably; the
concatenation costs nothing, is deterministic, and carries the antecedent's words to BM25 and to the
dense embedding. Only the one previous question is added, so a change of topic pulls in little.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
CountFn = Callable[[list[Message]], int]  # tokens of a list of chat messages

# Citation markers of an earlier answer refer to that turn's passages, not this one's.
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


@dataclass(frozen=True)
class HistoryFit:
    """The history a follow-up's prompt carries, and what did not fit."""

    messages: list[Message] = field(default_factory=list)
    budget: int = 0
    tokens: int = 0  # of the kept messages, as ``count`` counts them
    turns: int = 0  # kept
    dropped_turns: int = 0
    dropped_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "tokens": self.tokens, "turns": self.turns,
            "dropped_turns": self.dropped_turns, "dropped_tokens": self.dropped_tokens,
        }


def history_turns(messages: list[Message]) -> list[list[Message]]:
    """``messages`` (user/assistant, oldest first; others ignored) grouped into turns: a user message and
    the assistant messages after it. Content is text; earlier answers lose their citation markers."""
    turns: list[list[Message]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str) or not content.strip():
            continue
        if role == "assistant":
            content = _CITATION.sub("", content).strip()
        if role == "user" or not turns:
            turns.append([])
        turns[-1].append({"role": role, "content": content})
    return turns


def history_fit(messages: list[Message], *, budget: int, count: CountFn) -> HistoryFit:
    """The newest whole turns of ``messages`` whose tokens (``count`` of the kept messages) stay within
    ``budget``; the older ones are dropped. ``budget`` 0: no history."""
    if budget < 0:
        raise ValueError(f"the history token budget must be >= 0, got {budget}")
    turns = history_turns(messages)
    kept: list[list[Message]] = []
    tokens = 0
    for turn in reversed(turns):
        candidate = [message for t in [turn, *kept] for message in t]
        needed = count(candidate) if budget else budget + 1
        if needed > budget:
            break
        kept.insert(0, turn)
        tokens = needed
    dropped = turns[: len(turns) - len(kept)]
    dropped_messages = [message for turn in dropped for message in turn]
    return HistoryFit(
        messages=[message for turn in kept for message in turn], budget=budget, tokens=tokens, turns=len(kept),
        dropped_turns=len(dropped), dropped_tokens=count(dropped_messages) if dropped_messages else 0,
    )


def retrieval_query(question: str, history: list[Message]) -> str:
    """What a follow-up retrieves with: the previous user question, then ``question`` (``question`` alone
    without history)."""
    previous = next((m["content"] for m in reversed(history) if m.get("role") == "user"), "")
    return f"{previous}\n{question}" if previous else question


def with_history(messages: list[Message], history: list[Message]) -> list[Message]:
    """A strategy's prompt (system messages, then the question with its passages) with ``history`` placed
    after its leading system messages, before the question."""
    if not history:
        return messages
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    return [*messages[:lead], *history, *messages[lead:]]


__all__ = ["HistoryFit", "history_fit", "history_turns", "retrieval_query", "with_history"]
