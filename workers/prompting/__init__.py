"""Prompting strategies, chosen by name. Each turns (question, passages) into chat messages;
strategies with `runs_model = True` (superposition) also run a local model themselves, and
`extractive = True` (extractive_answer) answers from the passages without any generation."""

from __future__ import annotations

from typing import Any

from workers.config_options import config_from_options
from workers.prompting.base import ModelRunningStrategy, Passage, PromptingStrategy
from workers.prompting.extractive_answer import ExtractiveAnswerPrompting
from workers.prompting.naive import NaivePrompting
from workers.prompting.superposition import SuperpositionPrompting

STRATEGIES: dict[str, type[PromptingStrategy]] = {
    NaivePrompting.name: NaivePrompting,
    SuperpositionPrompting.name: SuperpositionPrompting,
    ExtractiveAnswerPrompting.name: ExtractiveAnswerPrompting,
}


def _strategy_class(name: str) -> type[PromptingStrategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown prompting strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})") from None


def strategy_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The strategy's config dataclass built from plain options (None when it takes none).

    Raises ValueError naming unknown options (with the valid ones) or impossible values."""
    config_class = getattr(_strategy_class(name), "config_class", None)
    return config_from_options(config_class, options, what=f"prompting strategy {name!r}")


def get_strategy(name: str, options: dict[str, Any] | None = None) -> PromptingStrategy:
    """A strategy instance by name, configured from plain options (a pipeline's `prompting_options`)."""
    cls = _strategy_class(name)
    config = strategy_config(name, options)
    return cls() if config is None else cls(config)  # type: ignore[call-arg]


__all__ = ["STRATEGIES", "ModelRunningStrategy", "Passage", "PromptingStrategy", "get_strategy", "strategy_config"]
