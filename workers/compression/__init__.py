"""Context compression methods, chosen by name (TCRA-LLM families, one module each).

    get_method("extractive")                                  # defaults: MiniLM, SmolLM2, no cache
    get_method("summarize", resources=Resources(generator=lm, cache=CompressionCache(dir)))
    get_method("surprisal_prune", resources=..., query_aware=False)   # method parameters by keyword

    plan = method.plan(query=q, passages=ps, target=0.5, count_tokens=count)   # the bound, no model run
    result = method.compress(query=q, passages=ps, target=0.5, count_tokens=count, plan=plan)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from workers.compression.base import CompressedContext
from workers.compression.cache import CompressionCache
from workers.compression.extractive import Extractive
from workers.compression.none import NoCompression
from workers.compression.plan import CompressionMethod, CompressionPlan, ModelCall
from workers.compression.resources import Resources
from workers.compression.semantic_prune import SemanticPrune
from workers.compression.summarize import Summarize
from workers.compression.surprisal_prune import SurprisalPrune

METHODS: dict[str, type[CompressionMethod]] = {
    NoCompression.name: NoCompression,
    Extractive.name: Extractive,
    Summarize.name: Summarize,
    SemanticPrune.name: SemanticPrune,
    SurprisalPrune.name: SurprisalPrune,
}


def get_method(name: str, **options: Any) -> CompressionMethod:
    """A method instance by name; `options` (resources=..., method parameters) go to its constructor."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown compression method {name!r} (valid: {', '.join(sorted(METHODS))})") from None
    return cls(**options)


_CACHES: dict[str, CompressionCache] = {}
_CACHES_LOCK = threading.Lock()


def shared_cache(directory: str | Path, *, max_bytes: int | None = None) -> CompressionCache:
    """The process-wide cache for a directory (opening one scans it, so do it once)."""
    key = str(Path(directory).resolve())
    with _CACHES_LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = CompressionCache(directory, **({"max_bytes": max_bytes} if max_bytes else {}))
            _CACHES[key] = cache
        return cache


def pipeline_method(
    name: str,
    *,
    target: Any = None,
    cache_dir: str | Path | None = None,
    model_cache_dir: str | Path | None = None,
    **params: Any,
) -> CompressionMethod:
    """A method wired the way a RAG pipeline runs it.

    `target` is the pipeline's meter target: it writes the summaries, and scores surprisal when
    it is a local model (a remote one cannot, so the default SmolLM2 under `model_cache_dir`
    does). `cache_dir` holds the on-disk cache of query-independent work (None: no cache).
    """
    if name not in METHODS:
        get_method(name)  # raises with the list of valid names
    if name == NoCompression.name:
        return NoCompression()
    resources = Resources(
        generator=target,
        cache=shared_cache(cache_dir) if cache_dir is not None else None,
        model_cache_dir=Path(model_cache_dir) if model_cache_dir is not None else None,
    )
    return get_method(name, resources=resources, **params)


__all__ = [
    "METHODS",
    "ModelCall",
    "CompressedContext",
    "CompressionCache",
    "CompressionMethod",
    "CompressionPlan",
    "Resources",
    "get_method",
    "pipeline_method",
    "shared_cache",
]
