"""One JSON error shape for the whole REST API: {"error": {"code", "message", "detail"}}."""

from __future__ import annotations

from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from apps.core.errors import ServiceError


def error_response(*, code: str, message: str, http_status: int, detail: dict | None = None) -> Response:
    return Response({"error": {"code": code, "message": message, "detail": detail or {}}}, status=http_status)


def api_exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return error_response(code=exc.code, message=exc.message, http_status=exc.http_status, detail=exc.detail)
    if isinstance(exc, Http404):
        return error_response(code="not_found", message="not found", http_status=status.HTTP_404_NOT_FOUND)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        code, message, detail = "validation_failed", "the request is not valid", {"fields": exc.detail}
    else:
        detail_value = getattr(exc, "detail", "")
        code = getattr(detail_value, "code", None) or getattr(exc, "default_code", "error")
        message, detail = str(detail_value), {}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            detail = {"retry_after_s": round(exc.wait, 1)}
    response.data = {"error": {"code": code, "message": message, "detail": detail}}
    return response


@csrf_exempt  # it only ever answers 404: a write to an unknown API URL is an API client's, never a form's
def unmatched_url(request) -> JsonResponse:
    """404 in the API's error shape for a URL under /api/ or /v1/ that names no operation (instead of the
    browser's HTML page): ``/api/v1/pipelines/true`` is an API client's mistake, not a page."""
    message = f"no API operation at {request.path}"
    if request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "not_found"}}
    else:
        body = {"error": {"code": "not_found", "message": message, "detail": {}}}
    return JsonResponse(body, status=404)
