"""OpenAI's wire shapes for the compatible endpoints: errors, chat completions, their stream
chunks and usage, and how a QueryRun (pipeline or model endpoint) or an AgentRun fills them.

Both paths of /v1/chat/completions answer through these helpers, so the views do not import
each other. Cost and savings travel in X-Parsimony-* headers (non-streaming) and in a
`parsimony` field of the final usage chunk (streaming, where headers leave before the cost is
known).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework import status
from rest_framework.response import Response

from apps.agents import selectors as agent_selectors
from apps.agents.models import AgentRun, AgentRunStatus
from apps.answer_cache.selectors import cache_info
from apps.api.sse import KEEP_ALIVE, KEEP_ALIVE_S, RowWaitTimedOut, rows_until_finished, sse_response
from apps.costs.money_format import money_str
from apps.rag.models import QueryRun, QueryStatus

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def openai_error(
    *, message: str, http_status: int, code: str | None = None, param: str | None = None, extra: Any = None
) -> Response:
    """An error in OpenAI's shape (our detail, if any, under `parsimony`), so its clients raise the right exception."""
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


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return "" if content is None else str(content)


def embedding_base64(vector: list[float]) -> str:
    # OpenAI's base64 format: little-endian float32, what the official client asks for by default.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --------------------------------------------------------------------------- chat completions


@dataclass(frozen=True)
class ChatRunShape:
    """How one kind of run (a row whose answer a worker writes) reads as an OpenAI chat completion."""

    row_model: type[QueryRun] | type[AgentRun]
    id_prefix: str
    run_header: str
    failed_status: str
    failed_message: str  # "<this>: <run.error>"
    stream_timeout_message: str
    still_running_message: str  # formatted with the run's pk
    length_reasons: tuple[str, ...]  # the run's finish reasons that OpenAI calls "length"
    usage: Callable[[Any], dict]
    parsimony: Callable[[Any], dict]
    cost_headers: Callable[[Any], dict[str, str]]

    def finish_reason(self, run: Any) -> str:
        return "length" if run.finish_reason in self.length_reasons else "stop"


def _query_run_usage(run: QueryRun) -> dict:
    return {
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": run.cached_tokens},
    }


def _query_run_parsimony(run: QueryRun) -> dict:
    return {
        "query_run_id": run.pk,
        # The run's own: "budget" reads as OpenAI's "length", "repetition" (a loop stopped) as "stop".
        "finish_reason": run.finish_reason,
        "repetition_tokens_saved": run.repetition_tokens_saved,
        # The answer's quality (docs/quality.md); label "" when not assessed (a direct call).
        "quality": {
            "label": run.quality_label,
            "support": run.support,
            "support_score": run.support_score,
            "retrieval_confidence": run.retrieval_confidence,
            "citations_removed": run.citations_removed,
        },
        "cost": money_str(run.cost),
        "baseline_cost": money_str(run.baseline_cost),
        "baseline_kind": run.baseline_kind,
        "savings": money_str(run.savings),
        "citations": run.citations,
        # The answer cache (docs/cache.md): status hit | miss | bypass, kind exact | semantic.
        "cache": cache_info(run=run),
        # A cascade's tiers (which answered, and why) and a budget degradation (docs/cascades.md); null: none.
        "cascade": run.cascade or None,
        "degradation": run.degradation or None,
    }


def _query_run_cost_headers(run: QueryRun) -> dict[str, str]:
    return {
        "X-Parsimony-Cost": money_str(run.cost),
        "X-Parsimony-Baseline-Cost": money_str(run.baseline_cost),
        "X-Parsimony-Baseline-Kind": run.baseline_kind,
        "X-Parsimony-Savings": money_str(run.savings),
    }


def _agent_run_usage(run: AgentRun) -> dict:
    usage = agent_selectors.agent_run_usage(run=run)  # the ledger's totals of the run's model calls
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": 0}}


def _agent_run_parsimony(run: AgentRun) -> dict:
    return {"agent_run_id": run.pk, "cost": money_str(run.cost), "model_calls": run.model_calls,
            "tools_offered": run.tools_offered, "tools_called": run.tools_called, "tool_outcome": run.tool_outcome}


QUERY_RUN_CHAT = ChatRunShape(
    row_model=QueryRun,
    id_prefix="chatcmpl-",
    run_header="X-Parsimony-Query-Run",
    failed_status=QueryStatus.FAILED,
    failed_message="the model call failed",
    stream_timeout_message="timed out waiting for the answer",
    still_running_message="the answer is still being generated; poll GET /api/v1/queries/{}",
    # "budget": the hold ran out (docs/costs.md); "repetition" (the guard stopped a loop) reads as "stop".
    length_reasons=("length", "time_limit", "budget"),
    usage=_query_run_usage,
    parsimony=_query_run_parsimony,
    cost_headers=_query_run_cost_headers,
)

AGENT_RUN_CHAT = ChatRunShape(
    row_model=AgentRun,
    id_prefix="chatcmpl-agent-",
    run_header="X-Parsimony-Agent-Run",
    failed_status=AgentRunStatus.FAILED,
    failed_message="the agent run failed",
    stream_timeout_message="timed out waiting for the agent",
    still_running_message="the agent is still working; poll GET /api/v1/agent-runs/{}",
    length_reasons=("length", "step_limit", "budget"),
    usage=_agent_run_usage,
    parsimony=_agent_run_parsimony,
    cost_headers=lambda run: {"X-Parsimony-Cost": money_str(run.cost)},
)


def chat_completion_response(shape: ChatRunShape, *, run: Any, model: str) -> Response:
    """The non-streaming answer of a run that was waited for: 200, or 502 failed, or 504 still running."""
    if run.status == shape.failed_status:
        return openai_error(message=f"{shape.failed_message}: {run.error}", http_status=502, code="upstream_error")
    if not run.is_finished:
        return openai_error(message=shape.still_running_message.format(run.pk), http_status=504, code="timeout")
    body = {
        "id": f"{shape.id_prefix}{run.pk}",
        "object": "chat.completion",
        "created": int(run.created_at.timestamp()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": run.answer},
                "finish_reason": shape.finish_reason(run),
            }
        ],
        "usage": shape.usage(run),
        "parsimony": shape.parsimony(run),
    }
    response = Response(body, status=status.HTTP_200_OK)
    response[shape.run_header] = str(run.pk)
    for name, value in shape.cost_headers(run).items():
        response[name] = value
    return response


def chat_completion_stream_response(
    shape: ChatRunShape, *, run_id: int, model: str, include_usage: bool
) -> StreamingHttpResponse:
    """Relay the run's answer as chat.completion.chunk events while it grows in its row."""
    return sse_response(
        chat_completion_chunks(shape, run_id=run_id, model=model, include_usage=include_usage),
        headers={shape.run_header: str(run_id)},
        on_disconnect=lambda: run_cancel_unfinished(shape.row_model, run_id),
    )


def run_cancel_unfinished(row_model, run_id: int) -> None:
    """A client closed the stream of a run still answering: cancel its job (the worker stops before its next
    token and bills what it generated; ``apps.rag.services.query_run_cancel``)."""
    from apps.core.services import job_cancel

    run = row_model.objects.select_related("job").filter(pk=run_id).first()
    if run is not None and not run.is_finished and run.job is not None:
        job_cancel(job=run.job)


def chat_completion_chunks(
    shape: ChatRunShape, *, run_id: int, model: str, include_usage: bool
) -> Iterator[dict | str | None]:
    """The chunks of a streamed answer: role, the answer's growth, finish reason, usage (when asked), [DONE]."""
    base = {
        "id": f"{shape.id_prefix}{run_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    sent = 0
    quiet_since = time.monotonic()
    rows = rows_until_finished(
        lambda: shape.row_model.objects.get(pk=run_id), timeout_s=settings.PARSIMONY_SYNC_QUERY_TIMEOUT_S * 3
    )
    try:
        for run in rows:
            if len(run.answer) > sent:
                yield {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": run.answer[sent:]}, "finish_reason": None}],
                }
                sent = len(run.answer)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEP_ALIVE_S:
                yield KEEP_ALIVE  # a write that fails when the client has gone (its stream is then cancelled)
                quiet_since = time.monotonic()
    except RowWaitTimedOut:
        yield {"error": {"message": shape.stream_timeout_message, "type": "server_error", "code": "timeout"}}
        return
    if run.status == shape.failed_status:
        yield {
            "error": {
                "message": f"{shape.failed_message}: {run.error}",
                "type": "server_error",
                "code": "upstream_error",
            }
        }
        return
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": shape.finish_reason(run)}]}
    if include_usage:
        yield {**base, "choices": [], "usage": shape.usage(run), "parsimony": shape.parsimony(run)}
    yield "[DONE]"
