"""Context compression methods, chosen by name (TCRA-LLM families, one module each).

    get_method("extractive")                                  # defaults: MiniLM, SmolLM2, no cache
    get_method("summarize", resources=Resources(generator=lm, cache=CompressionCache(dir)))
    get_method("surprisal_prune", resources=..., query_aware=False)   # method parameters by keyword
"""

from __future__ import annotations

from typing import Any

from workers.compression.base import CompressedContext, CompressionMethod
from workers.compression.cache import CompressionCache
from workers.compression.none import NoCompression
from workers.compression.prune import SemanticPrune, SurprisalPrune
from workers.compression.resources import Resources
from workers.compression.summarize import Extractive, Summarize

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


__all__ = [
    "METHODS",
    "CompressedContext",
    "CompressionCache",
    "CompressionMethod",
    "Resources",
    "get_method",
]
