"""Models and caches a compression method may need, passed in by the caller or loaded lazily.

The pipeline hands in what it already has (its local model, the data root's cache); a bare
`get_method(name)` (tests, benchmarks) falls back to the process-wide defaults: MiniLM for
embeddings and SmolLM2-135M-Instruct, converted once under `model_cache_dir`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.compression.cache import CompressionCache

DEFAULT_LM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def default_model_cache_dir() -> Path:
    """Where the default SmolLM2 conversion lives: $PARSIMONY_MODEL_CACHE_DIR, else $DATA_ROOT, else ~/.cache."""
    for var in ("PARSIMONY_MODEL_CACHE_DIR", "DATA_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path.home() / ".cache" / "parsimony"


@dataclass
class Resources:
    """What methods share. Every field is optional; missing models load on first use.

    generator: the summarizer's meter target (a `LoadedModel` or an OpenAI-compatible config);
    scorer: a local `LoadedModel` whose logits give token surprisal (must be local);
    embedder: a sentence embedder with `.encode(texts) -> (N, D)` normalised rows;
    cache: where query-independent work is kept between calls (None: no caching).
    """

    generator: Any = None
    scorer: Any = None
    embedder: Any = None
    cache: CompressionCache | None = None
    model_cache_dir: Path | None = None
    # Seconds one summary call may run before the meter cuts it (a stuck call must not stall a query).
    generation_time_limit_s: float = 60.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get_embedder(self) -> Any:
        with self._lock:
            if self.embedder is None:
                from workers.runtime.embedders import get_embedder

                self.embedder = get_embedder(DEFAULT_EMBEDDER)
            return self.embedder

    def _default_lm(self) -> Any:
        from workers.runtime.local_lm import load_causal_lm

        return load_causal_lm(DEFAULT_LM, cache_dir=self.model_cache_dir or default_model_cache_dir())

    def get_scorer(self) -> Any:
        from workers.runtime.local_lm import LoadedModel

        with self._lock:
            if self.scorer is None:
                # The pipeline's own local model scores as well as any; a remote one cannot
                # (no logits over the API), so fall back to the small default.
                self.scorer = self.generator if isinstance(self.generator, LoadedModel) else self._default_lm()
            return self.scorer

    def get_generator(self) -> Any:
        with self._lock:
            if self.generator is None:
                self.generator = self._default_lm()
            return self.generator
