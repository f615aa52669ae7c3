"""Context compression methods, chosen by name (TCRA-LLM families are added as modules here)."""

from __future__ import annotations

from workers.compression.base import CompressedContext, CompressionMethod
from workers.compression.none import NoCompression

METHODS: dict[str, type[CompressionMethod]] = {
    NoCompression.name: NoCompression,
}


def get_method(name: str) -> CompressionMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown compression method {name!r} (valid: {', '.join(sorted(METHODS))})") from None


__all__ = ["METHODS", "CompressedContext", "CompressionMethod", "get_method"]
