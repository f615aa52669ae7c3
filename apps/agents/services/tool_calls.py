"""A Tool row as a plain ``fn(arguments) -> result`` the engine's agent loop can call.

Every database read happens when the callable is made; the function then runs on a tool thread
(see ``workers.agent.executor``). Only retrieval tools touch the database there, on that
thread's own connection, closed when the call ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection

from apps.agents.models import Tool, ToolKind
from apps.agents.selectors import http_allowed_hosts
from apps.core.errors import ValidationFailed
from apps.core.network import HTTP_TOOLS, network_policy

ToolFunction = Callable[[dict[str, Any]], Any]


def _retrieval_search(tool: Tool) -> ToolFunction:
    from apps.corpora.models import Corpus
    from apps.corpora.selectors import chunk_search

    corpus = Corpus.objects.filter(pk=tool.config.get("corpus_id"), team_id=tool.team_id).first()
    k = int(tool.config.get("k", 3))
    retriever = tool.config.get("retriever", "hybrid")

    def call(arguments: dict[str, Any]) -> Any:
        if corpus is None:
            raise ValueError("the tool's corpus no longer exists")
        hits = chunk_search(corpus=corpus, query=str(arguments["query"]), retriever=retriever, k=k)
        return [
            {
                "title": hit.chunk.document.title,
                "text": hit.chunk.text[:800],
                "score": round(float(hit.score), 4),
            }
            for hit in hits
        ]

    return call


def tool_callable(*, tool: Tool) -> ToolFunction:
    """A plain ``fn(arguments) -> result`` for one tool, with every database read done now."""
    from workers.agent.http_tool import http_call
    from workers.agent.tools import get_callable

    if tool.kind == ToolKind.PYTHON:
        function = get_callable(tool.config.get("callable") or tool.name)
        return lambda arguments: function(**arguments)
    if tool.kind == ToolKind.HTTP:
        allowed = http_allowed_hosts()
        policy = network_policy(setting=HTTP_TOOLS)
        url, method = tool.config.get("url", ""), tool.config.get("method", "GET")

        def call_http(arguments: dict[str, Any]) -> Any:
            return http_call(
                url=url, method=method, arguments=arguments, allowed_hosts=allowed,
                timeout_s=settings.PARSIMONY_AGENT_HTTP_TIMEOUT_S,
                max_bytes=settings.PARSIMONY_AGENT_HTTP_MAX_BYTES, network_policy=policy,
            )

        return call_http
    if tool.kind == ToolKind.RETRIEVAL:
        search = _retrieval_search(tool)

        def call_retrieval(arguments: dict[str, Any]) -> Any:
            try:
                return search(arguments)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    connection.close()

        return call_retrieval
    raise ValidationFailed(f"tool {tool.name!r} has an unknown kind {tool.kind!r}")
