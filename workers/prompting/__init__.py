"""Prompting strategies, chosen by name. Each turns (question, passages) into chat messages;
strategies with `runs_model = True` (superposition) also run a local model themselves."""

from __future__ import annotations

from workers.prompting.base import ModelRunningStrategy, Passage, PromptingStrategy
from workers.prompting.naive import NaivePrompting
from workers.prompting.superposition import SuperpositionPrompting

STRATEGIES: dict[str, type[PromptingStrategy]] = {
    NaivePrompting.name: NaivePrompting,
    SuperpositionPrompting.name: SuperpositionPrompting,
}


def get_strategy(name: str) -> PromptingStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown prompting strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})") from None


__all__ = ["STRATEGIES", "ModelRunningStrategy", "Passage", "PromptingStrategy", "get_strategy"]
