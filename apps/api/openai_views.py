"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/embeddings, /v1/models.

`model` names a pipeline (RAG over its corpora; the last user message is the query, the messages
before it its history, within the pipeline's history_token_budget), an agent (the conversation is its
request) or a model endpoint (a metered chat call with the whole conversation). `temperature`,
`top_p` and `stop` override the pipeline's decoding options for the request. Budgets apply the
same way as everywhere; a refusal is HTTP 402 in OpenAI's error shape. The response shapes live in
`apps.api.openai_format`.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import APIException, NotAuthenticated, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.agents import selectors as agent_selectors
from apps.agents import services as agent_services
from apps.answer_cache.selectors import cache_status
from apps.api.openai_format import (
    AGENT_RUN_CHAT,
    QUERY_RUN_CHAT,
    chat_completion_response,
    chat_completion_stream_response,
    embedding_base64,
    message_text,
    openai_error,
)
from apps.api.serializers import StrictCharField, StrictFloatField, StrictIntegerField
from apps.api.shortcuts import request_api_key
from apps.core.errors import ServiceError
from apps.costs.metering import endpoints_available
from apps.rag import embeddings as rag_embeddings
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services


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
            return openai_error(
                message=f"invalid request: {exc.detail}", http_status=400, param=field, code="invalid_request"
            )
        if isinstance(exc, APIException):
            return openai_error(message=str(exc.detail), http_status=exc.status_code, code=exc.default_code)
        return super().handle_exception(exc)


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool", "developer"])
    content = serializers.JSONField(
        help_text="A string, null, or a list of content parts (objects with a string `type`; a `text` part's "
        "`text` is a string)"
    )

    def validate_content(self, content):
        """OpenAI's content: a string, null, or parts; a part of another type (an image) carries no text."""
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise serializers.ValidationError("content must be a string, null or a list of content parts")
        for index, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type", "text"), str):
                raise serializers.ValidationError(f"content part {index} must be an object with a string `type`")
            if "text" in part and not isinstance(part["text"], str):
                raise serializers.ValidationError(
                    f"content part {index}: `text` must be a string, not {type(part['text']).__name__}"
                )
        return content


class ChatCompletionInputSerializer(serializers.Serializer):
    model = StrictCharField()
    messages = ChatMessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(default=False)
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=32_768)
    max_completion_tokens = StrictIntegerField(required=False, min_value=1, max_value=32_768)
    stream_options = serializers.DictField(required=False)
    temperature = StrictFloatField(required=False, min_value=0, max_value=2, allow_null=True)
    top_p = StrictFloatField(required=False, min_value=0, max_value=1, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True, help_text="A string or up to 4 strings")
    user = StrictCharField(required=False, max_length=256)
    cache = serializers.BooleanField(
        required=False, help_text="Parsimony extension: false skips the team's answer cache (docs/cache.md)"
    )

    def validate_stop(self, stop):
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not 0 < len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
            raise serializers.ValidationError("stop must be a non-empty string or a list of 1 to 4 of them")
        return stops

    def validate_top_p(self, top_p):
        if top_p is not None and top_p <= 0:
            raise serializers.ValidationError("top_p must be greater than 0")
        return top_p


class ChatCompletionsView(OpenAIView):
    @extend_schema(
        request=ChatCompletionInputSerializer,
        responses={200: OpenApiResponse(
            OpenApiTypes.OBJECT,
            description="OpenAI's chat.completion, plus the `parsimony` extension object: query_run_id, "
            "finish_reason (the run's own: repetition, abstained, budget...), cost, baseline_cost, savings, "
            "citations, and `quality` {label: grounded | weak | unsupported | degenerate | abstained | \"\" "
            "(not assessed), support, support_score, retrieval_confidence, citations_removed} (docs/quality.md)",
        )},
        summary="OpenAI-compatible chat completion over a pipeline or a model endpoint",
    )
    def post(self, request):
        data = ChatCompletionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        messages = [{"role": m["role"], "content": message_text(m["content"])} for m in values["messages"]]
        last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
        question = messages[last_user]["content"] if last_user is not None else ""
        if not question.strip():
            return openai_error(
                message="the messages contain no user message with text", http_status=400, param="messages"
            )
        name = values["model"]
        pipeline = rag_selectors.pipeline_by_name(team=request.team, name=name)
        agent = endpoint = None
        if pipeline is None:
            agent = agent_selectors.agent_by_name(team=request.team, name=name)
        if pipeline is None and agent is None:
            endpoint = endpoints_available(team=request.team).filter(name=name).order_by("team_id").last()
            if endpoint is None:
                return openai_error(
                    message=f"The model `{name}` does not exist",
                    http_status=404,
                    code="model_not_found",
                    param="model",
                )
        if agent is not None:
            shape, wait = AGENT_RUN_CHAT, agent_services.agent_run_wait
            run = agent_services.agent_run_start(
                team=request.team, agent=agent, messages=messages, user=request.user, api_key=request_api_key(request)
            )
        else:
            shape, wait = QUERY_RUN_CHAT, rag_services.query_run_wait
            run = rag_services.query_run_start(
                team=request.team,
                pipeline=pipeline,
                endpoint=endpoint,
                question=question,
                messages=messages if endpoint is not None else [],
                # A pipeline reads the conversation before the last user message as its history (fitted to
                # its history_token_budget); a model endpoint reads the whole list.
                history=messages[:last_user] if pipeline is not None else None,
                max_output_tokens=values.get("max_completion_tokens") or values.get("max_tokens"),
                user=request.user,
                api_key=request_api_key(request),
                cache=values.get("cache"),
                decoding={key: values.get(key) for key in ("temperature", "top_p", "stop")},
            )
        if values["stream"]:
            include_usage = bool((values.get("stream_options") or {}).get("include_usage"))
            response = chat_completion_stream_response(shape, run_id=run.pk, model=name, include_usage=include_usage)
        else:
            run = wait(run=run, timeout_s=settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S)
            response = chat_completion_response(shape, run=run, model=name)
        if shape is QUERY_RUN_CHAT:
            # Decided when the run started (a hit is answered then): known before any token streams.
            response["X-Parsimony-Cache"] = cache_status(run=run)
        return response


class ModelsView(OpenAIView):
    required_scope = "read"
    required_scopes = {"GET": ("read", "query")}  # an OpenAI client with a query key lists what it can call

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="OpenAI-compatible list of pipelines and models")
    def get(self, request):
        data = [
            {"id": p.name, "object": "model", "created": int(p.created_at.timestamp()), "owned_by": request.team.slug,
             "parsimony": {"kind": "pipeline", "model": p.model_endpoint.name}}
            for p in rag_selectors.pipeline_list(team=request.team)
        ]
        data += [
            {
                "id": e.name,
                "object": "model",
                "created": int(e.created_at.timestamp()),
                "owned_by": request.team.slug if e.team_id else "parsimony",
                "parsimony": {"kind": "model", "type": e.kind},
            }
            for e in endpoints_available(team=request.team)
        ]
        data += [
            {"id": a.name, "object": "model", "created": int(a.created_at.timestamp()), "owned_by": request.team.slug,
             "parsimony": {"kind": "agent", "model": a.model_endpoint.name}}
            for a in agent_selectors.agent_list(team=request.team)
        ]
        data.append({"id": "all-MiniLM-L6-v2", "object": "model", "created": 0, "owned_by": "parsimony",
                     "parsimony": {"kind": "embedding"}})
        return Response({"object": "list", "data": data})


class EmbeddingsInputSerializer(serializers.Serializer):
    model = StrictCharField()
    input = serializers.JSONField()
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], default="float")


class EmbeddingsView(OpenAIView):
    @extend_schema(request=EmbeddingsInputSerializer, responses={200: OpenApiTypes.OBJECT},
                   summary="OpenAI-compatible embeddings (metered, budgeted, run on the gpu queue)")
    def post(self, request):
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
        result = rag_embeddings.embeddings_create(
            team=request.team, model=values["model"], texts=texts, user=request.user, api_key=request_api_key(request)
        )
        encode = embedding_base64 if values["encoding_format"] == "base64" else (lambda vector: vector)
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
