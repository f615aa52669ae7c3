"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/embeddings, /v1/models.

`model` names a pipeline (RAG over its corpora; the last user message is the query) or a model
endpoint (a metered chat call with the whole conversation). Budgets apply the same way as
everywhere; a refusal is HTTP 402 in OpenAI's error shape. Cost and savings travel in the
X-Parsimony-* response headers (non-streaming) and in a `parsimony` field of the final
usage chunk (streaming, where headers leave before the cost is known).
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotAuthenticated, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey
from apps.core.errors import ServiceError
from apps.costs.metering import endpoints_available
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.rag.models import QueryRun, QueryStatus

STREAM_POLL_S = 0.05
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def openai_error(*, message: str, http_status: int, code: str | None = None, param: str | None = None, extra=None):
    body = {
        "error": {
            "message": message,
            "type": OPENAI_ERROR_TYPES.get(http_status, "server_error"),
            "param": param,
            "code": code,
            **({"parsimony": extra} if extra else {}),
        }
    }
    return Response(body, status=http_status)


class OpenAIView(APIView):
    """Errors in OpenAI's shape instead of ours, so the official clients raise the right exception."""

    required_scope = "query"

    def handle_exception(self, exc):
        if isinstance(exc, ServiceError):
            return openai_error(message=exc.message, http_status=exc.http_status, code=exc.code, extra=exc.detail)
        if isinstance(exc, (NotAuthenticated,)) or getattr(exc, "status_code", None) == 401:
            return openai_error(message=str(getattr(exc, "detail", exc)), http_status=401, code="invalid_api_key")
        if isinstance(exc, PermissionDenied):
            return openai_error(message=str(exc.detail), http_status=403, code="permission_denied")
        if isinstance(exc, serializers.ValidationError):
            field = next(iter(exc.detail), None) if isinstance(exc.detail, dict) else None
            return openai_error(message=f"invalid request: {exc.detail}", http_status=400, param=field, code="invalid_request")
        if isinstance(exc, APIException):
            return openai_error(message=str(exc.detail), http_status=exc.status_code, code=exc.default_code)
        return super().handle_exception(exc)


def _api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool", "developer"])
    content = serializers.JSONField()


class ChatCompletionInputSerializer(serializers.Serializer):
    model = serializers.CharField()
    messages = ChatMessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(default=False)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=32_768)
    max_completion_tokens = serializers.IntegerField(required=False, min_value=1, max_value=32_768)
    stream_options = serializers.DictField(required=False)
    temperature = serializers.FloatField(required=False)
    user = serializers.CharField(required=False)


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _usage(run: QueryRun) -> dict:
    return {
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": run.cached_tokens},
    }


def _parsimony(run: QueryRun) -> dict:
    return {
        "query_run_id": run.pk,
        "cost": str(run.cost),
        "baseline_cost": str(run.baseline_cost),
        "savings": str(run.savings),
        "citations": run.citations,
    }


def _finish_reason(run: QueryRun) -> str:
    return "length" if run.finish_reason in ("length", "time_limit") else "stop"


class ChatCompletionsView(OpenAIView):
    @extend_schema(request=ChatCompletionInputSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="OpenAI-compatible chat completion over a pipeline or a model endpoint")
    def post(self, request):
        data = ChatCompletionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        messages = [{"role": m["role"], "content": _content_text(m["content"])} for m in values["messages"]]
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not question.strip():
            return openai_error(message="the messages contain no user message with text", http_status=400, param="messages")
        max_tokens = values.get("max_completion_tokens") or values.get("max_tokens")
        name = values["model"]
        pipeline = rag_selectors.pipeline_by_name(team=request.team, name=name)
        endpoint = None
        if pipeline is None:
            from apps.agents.selectors import agent_by_name

            agent = agent_by_name(team=request.team, name=name)
            if agent is not None:
                from apps.api.agent_views import agent_chat_completion

                include_usage = bool((values.get("stream_options") or {}).get("include_usage"))
                return agent_chat_completion(request, agent=agent, name=name, messages=messages,
                                             stream=values["stream"], include_usage=include_usage)
            endpoint = endpoints_available(team=request.team).filter(name=name).order_by("team_id").last()
            if endpoint is None:
                return openai_error(message=f"The model `{name}` does not exist", http_status=404, code="model_not_found", param="model")
        run = rag_services.query_run_start(
            team=request.team,
            pipeline=pipeline,
            endpoint=endpoint,
            question=question,
            messages=messages if endpoint is not None else [],
            max_output_tokens=max_tokens,
            user=request.user,
            api_key=_api_key(request),
        )
        if values["stream"]:
            include_usage = bool((values.get("stream_options") or {}).get("include_usage"))
            response = StreamingHttpResponse(_stream(run.pk, name, include_usage), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            response["X-Parsimony-Query-Run"] = str(run.pk)
            return response
        run = rag_services.query_run_wait(run=run, timeout_s=settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)
        if run.status == QueryStatus.FAILED:
            return openai_error(message=f"the model call failed: {run.error}", http_status=502, code="upstream_error")
        if not run.is_finished:
            return openai_error(
                message=f"the answer is still being generated; poll GET /api/v1/queries/{run.pk}",
                http_status=504, code="timeout",
            )
        body = {
            "id": f"chatcmpl-{run.pk}",
            "object": "chat.completion",
            "created": int(run.created_at.timestamp()),
            "model": name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": run.answer}, "finish_reason": _finish_reason(run)}
            ],
            "usage": _usage(run),
            "parsimony": _parsimony(run),
        }
        response = Response(body, status=status.HTTP_200_OK)
        response["X-Parsimony-Query-Run"] = str(run.pk)
        response["X-Parsimony-Cost"] = str(run.cost)
        response["X-Parsimony-Baseline-Cost"] = str(run.baseline_cost)
        response["X-Parsimony-Savings"] = str(run.savings)
        return response


def _sse(payload: dict | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def _stream(run_id: int, model: str, include_usage: bool):
    """Relay the answer as it grows in the QueryRun row (written by whichever worker runs it)."""
    from django.db import close_old_connections

    base = {"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    sent = 0
    deadline = time.monotonic() + settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S * 3
    try:
        while True:
            run = QueryRun.objects.get(pk=run_id)
            if len(run.answer) > sent:
                delta = run.answer[sent:]
                sent = len(run.answer)
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]})
            if run.is_finished:
                break
            if time.monotonic() > deadline:
                yield _sse({"error": {"message": "timed out waiting for the answer", "type": "server_error", "code": "timeout"}})
                return
            time.sleep(STREAM_POLL_S)
        if run.status == QueryStatus.FAILED:
            yield _sse({"error": {"message": f"the model call failed: {run.error}", "type": "server_error", "code": "upstream_error"}})
            return
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(run)}]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(run), "parsimony": _parsimony(run)})
        yield _sse("[DONE]")
    finally:
        close_old_connections()


class ModelsView(OpenAIView):
    required_scope = "read"

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="OpenAI-compatible list of pipelines and models")
    def get(self, request):
        data = [
            {"id": p.name, "object": "model", "created": int(p.created_at.timestamp()), "owned_by": request.team.slug,
             "parsimony": {"kind": "pipeline", "model": p.model_endpoint.name}}
            for p in rag_selectors.pipeline_list(team=request.team)
        ]
        data += [
            {"id": e.name, "object": "model", "created": int(e.created_at.timestamp()),
             "owned_by": request.team.slug if e.team_id else "parsimony", "parsimony": {"kind": "model", "type": e.kind}}
            for e in endpoints_available(team=request.team)
        ]
        from apps.agents.selectors import agent_list

        data += [
            {"id": a.name, "object": "model", "created": int(a.created_at.timestamp()), "owned_by": request.team.slug,
             "parsimony": {"kind": "agent", "model": a.model_endpoint.name}}
            for a in agent_list(team=request.team)
        ]
        data.append({"id": "all-MiniLM-L6-v2", "object": "model", "created": 0, "owned_by": "parsimony",
                     "parsimony": {"kind": "embedding"}})
        return Response({"object": "list", "data": data})


def _as_base64(vector: list[float]) -> str:
    # OpenAI's base64 format: little-endian float32, what the official client asks for by default.
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class EmbeddingsInputSerializer(serializers.Serializer):
    model = serializers.CharField()
    input = serializers.JSONField()
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], default="float")


class EmbeddingsView(OpenAIView):
    @extend_schema(request=EmbeddingsInputSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="OpenAI-compatible embeddings (metered, budgeted, run on the gpu queue)")
    def post(self, request):
        from apps.rag.embeddings import embeddings_create

        data = EmbeddingsInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        texts = values["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return openai_error(message="input must be a non-empty string or a list of non-empty strings",
                                http_status=400, param="input")
        if len(texts) > 256:
            return openai_error(message="at most 256 inputs per request", http_status=400, param="input")
        result = embeddings_create(
            team=request.team, model=values["model"], texts=texts, user=request.user, api_key=_api_key(request)
        )
        encode = _as_base64 if values["encoding_format"] == "base64" else (lambda vector: vector)
        return Response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode(vector)}
                    for i, vector in enumerate(result["vectors"])
                ],
                "model": values["model"],
                "usage": {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]},
            }
        )
