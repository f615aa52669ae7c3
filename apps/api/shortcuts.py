"""Small helpers the REST views share: the calling API key, pagination, finding an object by
name or id, and answering for a run that was just started (wait for it or not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import Model, QuerySet
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.core.errors import ValidationFailed
from apps.core.scoping import id_from_ref

ModelT = TypeVar("ModelT", bound=Model)


def request_api_key(request: Request) -> ApiKey | None:
    """The API key the request authenticated with (None for a browser session)."""
    return request.auth if isinstance(request.auth, ApiKey) else None


def paginated_response(
    view: APIView,
    request: Request,
    queryset: QuerySet,
    serializer_class: type[serializers.BaseSerializer],
    page_context: Callable[[list], dict] | None = None,
) -> Response:
    """One limit/offset page of `queryset`, serialized, with count, next and previous.

    `page_context(page)` gives the serializer what it would otherwise read row by row (each run's
    ledger stages): one query per page, not one per row.
    """
    paginator = LimitOffsetPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    context = page_context(list(page)) if page_context is not None else {}
    return paginator.get_paginated_response(serializer_class(page, many=True, context=context).data)


def stages_from_context(context: dict, run: Any, one_run: Callable[..., list[dict]]) -> list[dict]:
    """A run's ledger stages from its page's context (one query for a list page), else `one_run(run=run)`."""
    if "stages" in context:
        return context["stages"].get(run.pk, [])
    return one_run(run=run)


def find_by_name_or_id(queryset: QuerySet[ModelT], value: str, *, noun: str) -> ModelT:
    """The object of `queryset` named `value`, else the one whose id `value` spells.

    Unknown: ValidationFailed (400, code `unknown_<noun>`) listing the names there are.
    """
    found = queryset.filter(name=value).first()
    pk = id_from_ref(value)
    if found is None and pk is not None:
        found = queryset.filter(pk=pk).first()
    if found is None:
        known = ", ".join(queryset.values_list("name", flat=True)) or "none"
        raise ValidationFailed(f"unknown {noun} {value!r} (available: {known})", code=f"unknown_{noun}")
    return found


def started_run_response(
    run: Any,
    *,
    mode: str,
    timeout_s: float | None,
    wait: Callable[..., Any],
    serializer_class: type[serializers.BaseSerializer],
) -> Response:
    """The answer for a run (QueryRun, AgentRun) just started: `sync` waits for it with `wait`
    up to `timeout_s` (default PARSIMONY_SYNC_QUERY_TIMEOUT_S), `async` does not; 200 when it
    has finished, else 202 with the run to poll."""
    if mode == "sync":
        run = wait(run=run, timeout_s=settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S if timeout_s is None else timeout_s)
    else:
        run.refresh_from_db()
    code = status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED
    return Response(serializer_class(run).data, status=code)
