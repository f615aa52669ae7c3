"""Errors that services raise and every interface (web, REST, OpenAI-compatible) renders the same way."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be served as asked. ``code`` is stable; ``message`` is for people."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, message: str, *, detail: dict | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}
        if code:
            self.code = code


class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


class PermissionDenied(ServiceError):
    code = "permission_denied"
    http_status = 403


class ValidationFailed(ServiceError):
    code = "validation_failed"
    http_status = 400


class JobCancelled(Exception):
    """Raised inside a running job when someone cancelled it; the task stops cleanly."""


class RetryableJobError(Exception):
    """A transient failure (a busy database, a restarting endpoint): the task is retried."""
