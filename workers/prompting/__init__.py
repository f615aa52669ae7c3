"""Prompting strategies, chosen by name. Each turns (question, passages) into chat messages."""

from __future__ import annotations

from workers.prompting.base import Passage, PromptingStrategy
from workers.prompting.naive import NaivePrompting

STRATEGIES: dict[str, type[PromptingStrategy]] = {
    NaivePrompting.name: NaivePrompting,
}


def get_strategy(name: str) -> PromptingStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown prompting strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})") from None


__all__ = ["STRATEGIES", "Passage", "PromptingStrategy", "get_strategy"]
