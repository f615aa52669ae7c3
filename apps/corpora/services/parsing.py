"""Uploaded documents are parsed here, in a child process under the limits of the settings
(PARSIMONY_PARSE_*: memory, wall time, decompressed size and ratio); see workers/ingest/isolation.py."""

from __future__ import annotations

from django.conf import settings

from workers.ingest.isolation import ParseLimits, parse_document_isolated
from workers.ingest.parsers import ParsedDocument


def parse_limits() -> ParseLimits:
    return ParseLimits(
        memory_bytes=settings.PARSIMONY_PARSE_MEMORY_BYTES,
        timeout_s=settings.PARSIMONY_PARSE_TIMEOUT_S,
        max_inflated_bytes=settings.PARSIMONY_PARSE_MAX_INFLATED_BYTES,
        max_inflate_ratio=settings.PARSIMONY_PARSE_MAX_INFLATE_RATIO,
    )


def document_parse(*, filename: str, data: bytes, media_type: str | None = None) -> ParsedDocument:
    """The text of one upload, parsed under the limits (DocumentParseError saying why when it cannot be)."""
    return parse_document_isolated(filename=filename, data=data, media_type=media_type, limits=parse_limits())
