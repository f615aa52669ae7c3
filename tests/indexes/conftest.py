"""Shared fixtures for the index tests: small random normalised vectors and a tiny corpus."""

from __future__ import annotations

import numpy as np
import pytest

CORPUS = [
    (101, "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    (102, "Photosynthesis converts light energy into chemical energy in plants."),
    (103, "The Great Wall of China was built over many centuries."),
    (104, "Running shoes are designed for the repeated impact of jogging."),
    (105, "Paris is the capital and largest city of France."),
]


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(200, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def corpus() -> list[tuple[int, str]]:
    return list(CORPUS)


class KeywordEncoder:
    """A deterministic stand-in for the embedder: one dimension per corpus document."""

    dimension = len(CORPUS)

    def encode_query(self, text: str) -> np.ndarray:
        words = set(text.lower().split())
        v = np.array([len(words & set(t.lower().split())) for _, t in CORPUS], dtype=np.float32) + 1e-3
        return v / np.linalg.norm(v)


@pytest.fixture
def keyword_encoder() -> KeywordEncoder:
    return KeywordEncoder()
