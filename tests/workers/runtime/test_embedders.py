from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from workers.runtime.embedders import default_embedding_model_path, get_embedder, resolve_model_path

pytestmark = pytest.mark.slow  # loads the real MiniLM


def test_it_returns_normalised_float32_vectors(embedder):
    vectors = embedder.encode(["a cat sits on the mat", "stocks fell sharply", ""])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, embedder.dimension) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_it_puts_similar_sentences_closer(embedder):
    cat, kitten, market = embedder.encode(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The central bank raised interest rates.",
        ]
    )
    assert cat @ kitten > cat @ market + 0.3


def test_it_keeps_input_order_when_sorting_by_length(embedder):
    texts = ["short", "a much longer sentence about retrieval augmented generation " * 5, "mid length text"]
    together = embedder.encode(texts, batch_size=2)
    alone = np.vstack([embedder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(embedder.encode_query(texts[1]), alone[1], atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_it_loads_each_model_once_per_process(embedder):
    found = []
    threads = [
        threading.Thread(target=lambda: found.append(get_embedder("all-MiniLM-L6-v2"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e is embedder for e in found)
    assert get_embedder(default_embedding_model_path()) is embedder


def test_it_rejects_unknown_models_listing_known_names():
    with pytest.raises(ValueError, match="all-MiniLM-L6-v2"):
        resolve_model_path("no-such-model")


def test_it_never_imports_django():
    # A fresh interpreter: under pytest-django, Django is already in sys.modules.
    code = (
        "import sys, workers.ingest.parsers, workers.ingest.chunking, workers.runtime.embedders, "
        "indexes.vector_index, indexes.bm25, indexes.hybrid, indexes.registry; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
