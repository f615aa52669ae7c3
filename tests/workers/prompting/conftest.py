"""Fixtures for the prompting tests: one real SmolLM2 per session, a few short passages.

The converted model is cached under var/test-models when PARSIMONY_TEST_MODEL_CACHE is set
(as in tests/workers/runtime), else in a session tmp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.prompting.base import Passage

REPO_ROOT = Path(__file__).resolve().parents[3]

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


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("PARSIMONY_TEST_MODEL_CACHE"):
        path = REPO_ROOT / "var" / "test-models"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def smollm2(model_cache_dir: Path):
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    return load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu")


@pytest.fixture
def passages() -> list[Passage]:
    return [NOBEL, PARIS, EIFFEL]
