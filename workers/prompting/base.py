from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Passage:
    """One retrieved (possibly compressed) passage as the prompt sees it."""

    chunk_id: int
    title: str
    text: str


class PromptingStrategy(Protocol):
    name: str

    def build_messages(self, *, system_prompt: str, question: str, passages: list[Passage]) -> list[dict]: ...
