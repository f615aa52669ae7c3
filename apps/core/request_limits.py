"""How much a request may send, enforced before (and while) its body is read.

Three limits, all from settings (README, docs/api.md):
- PARSIMONY_MAX_REQUEST_BYTES: a whole request body (a drop of several files in the browser);
- PARSIMONY_MAX_UPLOAD_BYTES: one uploaded file;
- PARSIMONY_MAX_JSON_BYTES: a JSON body; and its nesting, PARSIMONY_MAX_JSON_DEPTH (400, `bounded_json`).

`RequestLimitsMiddleware` answers 413 from the declared Content-Length alone, without reading a
byte; for multipart bodies it then parses the form itself, so that `UploadLimitHandler` (first of
FILE_UPLOAD_HANDLERS) can stop the upload in the middle of the stream, once one file has passed
its limit, before the rest of the body is read or any file is stored whole. The 413 is in the
caller's error shape: OpenAI's under /v1/, ours (`{"error": {"code", "message", "detail"}}`)
everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import Resolver404, resolve

from apps.core.bounded_json import json_depth

OPENAI_PREFIX = "/v1/"


class UploadTooLarge(Exception):
    """A request or one of its files is over its limit (answered 413)."""

    def __init__(self, message: str, *, limit: int, what: str) -> None:
        super().__init__(message)
        self.message, self.limit, self.what = message, limit, what


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f}".rstrip("0").rstrip(".") + " MB"


class UploadLimitHandler(FileUploadHandler):
    """Counts each uploaded file's bytes as they stream in and stops at PARSIMONY_MAX_UPLOAD_BYTES.

    Passes every chunk on untouched to the next handler (memory or temporary file); raising here
    ends the multipart parse, so nothing past the limit is read."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        limit = settings.PARSIMONY_MAX_UPLOAD_BYTES
        if self.received > limit:
            raise UploadTooLarge(
                f"the file {self.file_name!r} is over the {_mb(limit)} limit per file", limit=limit, what="file"
            )
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file


def error_response(request: HttpRequest, *, status: int, code: str, message: str, detail: dict) -> HttpResponse:
    """An error in the error shape of the part of the site that was called."""
    if request.path.startswith(OPENAI_PREFIX):
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": code, "parsimony": detail}}
    else:
        body = {"error": {"code": code, "message": message, "detail": detail}}
    return JsonResponse(body, status=status)


def too_large_response(request: HttpRequest, message: str, *, limit: int, what: str) -> HttpResponse:
    """413 naming the limit; the rest of the body is not read, so the connection is not reused."""
    response = error_response(request, status=413, code="request_too_large", message=message,
                              detail={"limit_bytes": limit, "limit": what})
    response["Connection"] = "close"
    return response


def _declared_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _json_refusal(request: HttpRequest) -> HttpResponse | None:
    """400 for a JSON body nested deeper than PARSIMONY_MAX_JSON_DEPTH, checked here once for every
    endpoint (REST, OpenAI-compatible, any other) before a view, a permission or a parser sees it; the
    parsers check the rest (apps/api/parsers.py)."""
    try:
        raw = request.body  # at most PARSIMONY_MAX_JSON_BYTES (checked above); the views read this copy
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return too_large_response(request, f"the request body is over the {_mb(limit)} limit", limit=limit,
                                  what="json")
    depth, limit = json_depth(raw), settings.PARSIMONY_MAX_JSON_DEPTH
    if depth <= limit:
        return None
    return error_response(
        request, status=400, code="json_too_deep",
        message=f"the JSON is nested {depth:,} levels deep, over the limit of {limit}",
        detail={"depth": depth, "limit": limit},
    )


def _reads_multipart(request: HttpRequest) -> bool:
    """Whether the view called may read a multipart body: a Django view may; a REST view only with a
    multipart parser (the others answer 415 without reading it, so it is left unread here too)."""
    try:
        view = resolve(request.path_info).func
    except Resolver404:
        return False
    view_class = getattr(view, "cls", None)  # set by DRF's APIView.as_view
    if view_class is None:
        return True
    return any("multipart" in parser.media_type for parser in view_class().get_parsers())


class RequestLimitsMiddleware:
    """413 for a body over its limit, before the view runs (see the module docstring)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = _declared_length(request)
        content_type = (request.content_type or "").lower()
        if content_type.endswith("json") or content_type.endswith("+json"):
            limit, what = settings.PARSIMONY_MAX_JSON_BYTES, "json"
        else:
            limit, what = settings.PARSIMONY_MAX_REQUEST_BYTES, "request"
        if length is not None and length > limit:
            message = f"the request body is {_mb(length)}, over the {_mb(limit)} limit" + (
                " for JSON" if what == "json" else ""
            )
            return too_large_response(request, message, limit=limit, what=what)
        if what == "json" and length:
            refused = _json_refusal(request)
            if refused is not None:
                return refused
        if content_type == "multipart/form-data" and request.method == "POST" and _reads_multipart(request):
            try:
                request.FILES  # noqa: B018 - parse now, under UploadLimitHandler, so a refusal is a clean 413
            except UploadTooLarge as exc:
                return too_large_response(request, exc.message, limit=exc.limit, what=exc.what)
            except RequestDataTooBig:
                limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
                return too_large_response(
                    request, f"the form fields are over the {_mb(limit)} limit", limit=limit, what="fields"
                )
            except (MultiPartParserError, SuspiciousOperation) as exc:
                return error_response(request, status=400, code="malformed_request",
                                      message=f"the multipart body cannot be read: {exc}", detail={})
        return self.get_response(request)
