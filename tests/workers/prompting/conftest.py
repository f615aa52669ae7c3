"""Fixtures for the prompting tests: a few short passages (the session's SmolLM2 is tests/conftest.py's)."""

from __future__ import annotations

import pytest

from workers.prompting.base import Passage

NOBEL = Passage(
    11,
    "List of Nobel laureates in Physics",
    "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany.",
)
PARIS = Passage(12, "Paris", "Paris is the capital and most populous city of France.")
EIFFEL = Passage(
    13,
    "Eiffel Tower",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, named after the engineer "
    "Gustave Eiffel, whose company designed and built the tower.",
)
QUESTION = "who got the first nobel prize in physics"


@pytest.fixture
def passages() -> list[Passage]:
    return [NOBEL, PARIS, EIFFEL]
