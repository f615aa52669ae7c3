"""Shared fixtures for the model runtime tests: one real SmolLM2 per test session.

The converted safetensors copy is written under a tmp folder, or under /work/main/var/test-models
(the repository's var/test-models) when PARSIMONY_TEST_MODEL_CACHE is set, so repeated runs skip
the ~20 s GGUF conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


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

    # One thread: the test process shares two cores with whatever else runs (see notes).
    set_torch_threads(int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    return load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu")
