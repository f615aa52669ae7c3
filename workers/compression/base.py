from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from workers.prompting.base import Passage


@dataclass
class CompressedContext:
    """What a compression method returns: the passages to prompt with and what it cost."""

    passages: list[Passage]
    tokens_before: int
    tokens_after: int
    # Which character spans of each original passage survived: chunk_id -> [(start, end), ...].
    kept_spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    compute_s: float = 0.0
    model_prompt_tokens: int = 0
    model_completion_tokens: int = 0
    # The model that read/wrote the model_*_tokens above (as the meter names it), "" when none:
    # the pipeline bills those tokens at its endpoint's price only when it is the endpoint's model.
    model: str = ""


class CompressionMethod(Protocol):
    name: str

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext: ...
