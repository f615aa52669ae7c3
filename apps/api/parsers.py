"""The one JSON parser of the REST and OpenAI-compatible APIs: size and nesting bounded
(`apps.core.bounded_json`), so a deep or huge body is a 400 / 413 in the error shape, never a 500."""

from __future__ import annotations

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

from apps.core.bounded_json import JsonRefused, json_loads_bounded


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"
    default_detail = "the request body is too large"


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser with PARSIMONY_MAX_JSON_BYTES and PARSIMONY_MAX_JSON_DEPTH (reads at most one
    byte past the size limit, also where no Content-Length was declared)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.PARSIMONY_MAX_JSON_BYTES
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise RequestTooLarge(f"the JSON body is over the limit of {limit:,} bytes")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"JSON parse error - the body is not {encoding}: {exc}", code="json_invalid") from exc
        try:
            return json_loads_bounded(text, max_bytes=limit)
        except JsonRefused as exc:
            raise ParseError(f"JSON parse error - {exc.message}", code=exc.code) from exc
