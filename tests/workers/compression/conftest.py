"""Fixtures for the compression tests: fast doubles for the models, and the real ones once per session.

The doubles keep the selection logic testable in milliseconds: a bag-of-words embedder (cosine
= shared words) and whitespace "tokens". Real-model tests are marked slow and share one
SmolLM2 (`smollm2`, tests/conftest.py) and the process-wide MiniLM.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from workers.prompting.base import Passage


class BagOfWordsEmbedder:
    """TEST DOUBLE: each lower-cased word hashes to one of `dimension` axes; rows L2-normalised."""

    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension
        self.model_path = "bag-of-words"
        self.calls: list[int] = []  # texts per encode call

    def _axis(self, word: str) -> int:
        return int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dimension

    def encode(self, texts, *, batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, self._axis(word)] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


def count_words(text: str) -> int:
    """Whitespace tokens: the count_tokens double."""
    return len(text.split())


@pytest.fixture
def bow() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder()


@pytest.fixture
def passages() -> list[Passage]:
    return [
        Passage(
            chunk_id=11,
            title="Eiffel Tower",
            text=(
                "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the company of "
                "Gustave Eiffel. The tower was completed in 1889 for the World's Fair. It is 330 metres tall."
            ),
        ),
        Passage(
            chunk_id=12,
            title="Paris",
            text=(
                "Paris is the capital of France. The city has about 2.1 million residents. "
                "Paris hosted the Summer Olympics in 1900, 1924 and 2024."
            ),
        ),
        Passage(
            chunk_id=13,
            title="Cheese",
            text="Cheese is a dairy product. It is made from milk. Many kinds of cheese come from France.",
        ),
    ]


@pytest.fixture(scope="session")
def minilm():
    from workers.runtime.embedders import get_embedder

    return get_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def smollm2_count(smollm2):
    def count(text: str) -> int:
        return len(smollm2.tokenizer.encode(text, add_special_tokens=False))

    return count
