"""Writes for tools, agents and agent runs; the agent run itself (wiring the engine to Django).

Every tool change re-indexes that tool (``indexing.tool_index_sync``). ``agent_run_start``
(web process) reserves the worst case of ``step_limit`` model calls plus tool time (402 when a
budget refuses), creates the AgentRun and its Job on the gpu queue. ``agent_run_execute``
(worker) runs ``workers.agent.loop`` with three callables wired here: the model (every call
through ``metering.model_call``, stage agent-step, under the run's reservation), the tool
search (the query embedding metered as retrieve), and tool execution (each call metered as a
"tool" ledger row with its latency). Steps stream into the AgentRun row as they happen.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from apps.agents import indexing
from apps.agents.models import Agent, AgentRun, AgentRunStatus, HttpAllowedHost, Tool, ToolKind
from apps.core.errors import ValidationFailed
from apps.core.services import job_start
from apps.costs.metering import endpoint_resolve, endpoints_available, model_call
from apps.costs.models import ZERO, EndpointKind, ModelEndpoint, Stage, UsageRecord
from apps.costs.pricing import Usage, to_decimal, worst_case_cost
from apps.costs.services import (
    LedgerContext,
    PriceMissing,
    budget_reserve,
    price_current,
    reservation_release,
    reservation_settle,
    usage_record,
)

logger = logging.getLogger(__name__)

EMBEDDING_PRICE_NAME = "local/all-minilm-l6-v2"
# Tool calls are billed per second of wall time at this price, when the price book has it
# (load_builtin_tools adds it at the local CPU price); otherwise they are metered at zero.
TOOL_PRICE_NAME = "local/agent-tools"
STREAM_FLUSH_S = 0.15
RETRIEVAL_MAX_K = 20
TOOL_FIELDS = ("name", "description", "parameters", "kind", "config", "examples", "enabled")
AGENT_FIELDS = (
    "description", "system_prompt", "top_k", "similarity_threshold", "max_depth", "step_limit",
    "tool_timeout_s", "max_output_tokens",
)


# --------------------------------------------------------------------------- tools


def _allowed_hosts() -> list[str]:
    return list(HttpAllowedHost.objects.values_list("host", flat=True))


def tool_validate(*, team, name: str, description: str, parameters: Any, kind: str, config: Any,
                   examples: Any) -> tuple[dict, dict, list[str]]:
    """(parameters, config, examples) normalised, or ValidationFailed listing every problem."""
    from apps.agents.models import tool_name_validator
    from workers.agent.http_tool import METHODS, HttpToolError, check_url, url_placeholders
    from workers.agent.schema import schema_problems
    from workers.agent.tools import REGISTRY, RETRIEVAL_PARAMETERS

    errors: dict[str, str] = {}
    try:
        tool_name_validator(name)
    except Exception as exc:  # django ValidationError
        errors["name"] = " ".join(getattr(exc, "messages", [str(exc)]))
    if not (description or "").strip():
        errors["description"] = "a tool needs a description (the library search embeds it)"
    if kind not in ToolKind.values:
        errors["kind"] = f"unknown tool kind {kind!r} (valid: {', '.join(ToolKind.values)})"
    config = dict(config or {}) if isinstance(config, dict) else config
    if not isinstance(config, dict):
        errors["config"] = "config must be a JSON object"
        config = {}
    if kind == ToolKind.PYTHON:
        callable_name = config.get("callable") or name
        if not isinstance(callable_name, str) or callable_name not in REGISTRY:
            errors["config"] = (
                f"unknown built-in callable {callable_name!r} ({len(REGISTRY)} registered, "
                f"e.g. {', '.join(sorted(REGISTRY)[:4])})"
            )
        else:
            config = {"callable": callable_name}
            if not parameters:
                parameters = REGISTRY[callable_name].parameters
    elif kind == ToolKind.HTTP:
        url = str(config.get("url", ""))
        method = str(config.get("method", "GET")).upper()
        try:
            check_url(url, allowed_hosts=_allowed_hosts())
            placeholders = url_placeholders(url)
        except HttpToolError as exc:
            errors["config"] = str(exc)
            placeholders = []
        if method not in METHODS:
            errors["config"] = f"unsupported method {method!r} (valid: {', '.join(METHODS)})"
        properties = (parameters or {}).get("properties", {}) if isinstance(parameters, dict) else {}
        missing = [p for p in placeholders if not isinstance(properties, dict) or p not in properties]
        if missing and "config" not in errors:
            errors["config"] = f"URL placeholders without a parameter: {', '.join(missing)}"
        config = {"url": url, "method": method}
    elif kind == ToolKind.RETRIEVAL:
        from apps.corpora.models import Corpus

        corpus_id = config.get("corpus_id")
        valid_id = isinstance(corpus_id, int) and not isinstance(corpus_id, bool) and 0 < corpus_id < 2**63
        corpus = Corpus.objects.filter(pk=corpus_id, team=team).first() if valid_id and team else None
        if corpus is None:
            errors["config"] = "a retrieval tool needs the id of one of the team's corpora (config.corpus_id)"
        k = config.get("k", 3)
        if not isinstance(k, int) or not 1 <= k <= RETRIEVAL_MAX_K:
            errors["config"] = f"config.k must be a whole number from 1 to {RETRIEVAL_MAX_K}"
        retriever = config.get("retriever", "hybrid")
        if retriever not in ("dense", "bm25", "hybrid"):
            errors["config"] = f"unknown retriever {retriever!r} (valid: dense, bm25, hybrid)"
        config = {"corpus_id": corpus_id, "k": k, "retriever": retriever}
        parameters = RETRIEVAL_PARAMETERS
    if parameters in (None, ""):
        parameters = {"type": "object", "properties": {}, "required": []}
    problems = schema_problems(parameters)
    if problems:
        errors["parameters"] = "; ".join(problems)
    if examples is None:
        examples = []
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        errors["examples"] = "examples must be a list of strings"
    elif len(examples) > 200:
        errors["examples"] = "at most 200 examples per tool"
    if errors:
        raise ValidationFailed("; ".join(f"{k}: {v}" for k, v in errors.items()), detail={"fields": errors})
    return parameters, config, [e.strip() for e in examples if e.strip()]


def _check_name_free(*, team, name: str, exclude: int | None = None) -> None:
    clash = Tool.objects.filter(team=team, name=name)
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    if clash.exists():
        owner = "the team" if team is not None else "the global library"
        raise ValidationFailed(f"{owner} already has a tool called {name!r}", code="duplicate")


def tool_create(
    *,
    team,
    name: str,
    description: str,
    kind: str = ToolKind.PYTHON,
    parameters: dict | None = None,
    config: dict | None = None,
    examples: list[str] | None = None,
    enabled: bool = True,
    created_by=None,
) -> Tool:
    """Create a tool (team=None: global) and index it."""
    name = (name or "").strip()
    parameters, config, examples = tool_validate(
        team=team, name=name, description=description, parameters=parameters, kind=kind, config=config,
        examples=examples,
    )
    _check_name_free(team=team, name=name)
    try:
        with transaction.atomic():
            tool = Tool.objects.create(
                team=team, name=name, description=description.strip(), kind=kind, parameters=parameters,
                config=config, examples=examples, enabled=enabled,
                created_by=created_by if getattr(created_by, "pk", None) else None,
            )
    except IntegrityError as exc:
        raise ValidationFailed(f"a tool called {name!r} already exists", code="duplicate") from exc
    indexing.tool_index_sync(tool)
    return tool


def tool_update(*, tool: Tool, **changes: Any) -> Tool:
    """Change a tool; the version goes up by one when anything changed, and the tool is re-indexed."""
    unknown = set(changes) - set(TOOL_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown tool fields: {', '.join(sorted(unknown))}")
    values = {field: getattr(tool, field) for field in TOOL_FIELDS}
    values.update(changes)
    values["name"] = (values["name"] or "").strip()
    if "kind" in changes and changes["kind"] != tool.kind and "parameters" not in changes:
        values["parameters"] = None  # a new kind brings its own default schema
    parameters, config, examples = tool_validate(
        team=tool.team, name=values["name"], description=values["description"], parameters=values["parameters"],
        kind=values["kind"], config=values["config"], examples=values["examples"],
    )
    values.update(parameters=parameters, config=config, examples=examples, description=values["description"].strip())
    if all(getattr(tool, field) == values[field] for field in TOOL_FIELDS):
        return tool
    _check_name_free(team=tool.team, name=values["name"], exclude=tool.pk)
    for field in TOOL_FIELDS:
        setattr(tool, field, values[field])
    tool.version += 1
    tool.save()
    indexing.tool_index_sync(tool)
    return tool


def tool_delete(*, tool: Tool) -> None:
    scope, tool_id = indexing.scope_of(tool), tool.pk
    tool.delete()
    indexing.tool_index_drop(scope=scope, tool_id=tool_id)


def tool_index_rebuild(*, team=None, include_global: bool = True) -> dict[str, int]:
    """Rebuild indexes from the database: one team's (and the global one), or every team's."""
    from apps.accounts.models import Team
    from indexes.tool_index import GLOBAL_SCOPE

    store = indexing.tool_store()
    counts: dict[str, int] = {}
    teams = [team] if team is not None else list(Team.objects.all())
    for each in teams:
        tools = Tool.objects.filter(team=each, enabled=True).order_by("pk")
        counts[f"team {each.pk}"] = store.rebuild(each.pk, [indexing.document_of(t) for t in tools])
    if include_global:
        tools = Tool.objects.filter(team=None, enabled=True).order_by("pk")
        counts[GLOBAL_SCOPE] = store.rebuild(GLOBAL_SCOPE, [indexing.document_of(t) for t in tools])
    return counts


def http_host_allow(*, host: str, note: str = "") -> HttpAllowedHost:
    host = host.strip().lower()
    if not host or "/" in host or " " in host:
        raise ValidationFailed(f"{host!r} is not a host name (e.g. api.example.com or *.example.com)")
    allowed, _ = HttpAllowedHost.objects.get_or_create(host=host, defaults={"note": note})
    return allowed


def builtin_tools_load(*, packs: list[str] | None = None) -> dict[str, int]:
    """Create or refresh the global Tool rows of the built-in packs (idempotent), and the tool price."""
    from apps.costs.defaults import CPU_PER_SECOND, EFFECTIVE
    from apps.costs.models import Price
    from workers.agent.tools import builtin_tools

    Price.objects.get_or_create(
        model_name=TOOL_PRICE_NAME, effective_from=EFFECTIVE,
        defaults={"per_cpu_second": CPU_PER_SECOND, "provider": "local", "source": "parsimony default for tool calls"},
    )
    created = updated = unchanged = 0
    for builtin in builtin_tools(packs):
        existing = Tool.objects.filter(team=None, name=builtin.name).first()
        values = {"description": builtin.description, "kind": ToolKind.PYTHON, "parameters": builtin.parameters,
                  "config": {"callable": builtin.name}}
        if existing is None:
            tool_create(team=None, name=builtin.name, **values)
            created += 1
        elif any(getattr(existing, k) != v for k, v in values.items()):
            tool_update(tool=existing, **values)
            updated += 1
        else:
            unchanged += 1
    return {"created": created, "updated": updated, "unchanged": unchanged}


# --------------------------------------------------------------------------- agents


def agent_validate(*, values: dict[str, Any]) -> None:
    limits = {
        "top_k": (1, 50), "max_depth": (0, 5), "step_limit": (1, 64), "max_output_tokens": (1, 32_768),
    }
    errors: dict[str, str] = {}
    for field, (low, high) in limits.items():
        if field in values and not (isinstance(values[field], int) and low <= values[field] <= high):
            errors[field] = f"{field} must be a whole number from {low} to {high}"
    if "similarity_threshold" in values and not -1 <= float(values["similarity_threshold"]) <= 1:
        errors["similarity_threshold"] = "the similarity threshold is a cosine score from -1 to 1"
    if "tool_timeout_s" in values and not 0.1 <= float(values["tool_timeout_s"]) <= 600:
        errors["tool_timeout_s"] = "the tool timeout must be from 0.1 to 600 seconds"
    if errors:
        raise ValidationFailed("; ".join(errors.values()), detail={"fields": errors})


@transaction.atomic
def agent_save(
    *,
    team,
    name: str,
    model_endpoint: ModelEndpoint | str,
    agent: Agent | None = None,
    created_by=None,
    **values: Any,
) -> Agent:
    """Create or change an agent. Its name must not clash with a pipeline or model the team can call."""
    from apps.rag.models import Pipeline

    unknown = set(values) - set(AGENT_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown agent options: {', '.join(sorted(unknown))}")
    agent_validate(values=values)
    if isinstance(model_endpoint, str):
        model_endpoint = endpoint_resolve(team=team, name=model_endpoint)
    if model_endpoint.team_id not in (None, team.pk):
        raise ValidationFailed("that model endpoint belongs to another team")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("an agent needs a name")
    clash = Agent.objects.filter(team=team, name=name)
    if agent is not None:
        clash = clash.exclude(pk=agent.pk)
    if clash.exists():
        raise ValidationFailed(f"the team already has an agent called {name!r}", code="duplicate")
    if Pipeline.objects.filter(team=team, name=name).exists() or endpoints_available(team=team).filter(name=name).exists():
        raise ValidationFailed(
            f"{name!r} already names a pipeline or a model: agents share the OpenAI `model` namespace", code="duplicate"
        )
    agent = agent or Agent(team=team, created_by=created_by if getattr(created_by, "pk", None) else None)
    agent.name = name
    agent.model_endpoint = model_endpoint
    for key, value in values.items():
        setattr(agent, key, value)
    agent.save()
    return agent


def agent_delete(*, agent: Agent) -> None:
    agent.delete()


# --------------------------------------------------------------------------- starting a run


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text or "") / 3)


def agent_run_worst_case(*, agent: Agent, request: str, messages: list[dict] | None = None) -> Decimal:
    """The most a run can cost: step_limit model calls at a full prompt and every output token, plus tools."""
    endpoint = agent.model_endpoint
    price = price_current(model_name=endpoint.price_name)
    # Per call: system prompt, request, up to top_k tool definitions per search level, the growing
    # conversation (each earlier step's output and tool result), capped by the context window.
    prompt = 64 + _estimate_tokens(agent.system_prompt) + 2 * _estimate_tokens(request)
    prompt += sum(_estimate_tokens(str(m.get("content", ""))) + 8 for m in messages or [])
    prompt += agent.top_k * (agent.max_depth + 1) * 200
    prompt += agent.step_limit * (agent.max_output_tokens + 200)
    prompt = min(prompt, endpoint.context_window)
    is_local = endpoint.kind == EndpointKind.LOCAL
    per_call = worst_case_cost(
        price=price,
        prompt_tokens=prompt,
        max_output_tokens=min(agent.max_output_tokens, endpoint.max_output_tokens),
        max_seconds=settings.PARSIMONY_MODEL_WALL_TIME_S if is_local else 0.0,
        on_gpu=settings.PARSIMONY_WORKER_DEVICE == "cuda",
    )
    estimate = agent.step_limit * per_call
    # Every model call may trigger tool calls (a few in OpenAI mode), each up to the timeout.
    tool_price = _price_or_none(TOOL_PRICE_NAME)
    if tool_price is not None:
        estimate += worst_case_cost(
            price=tool_price, prompt_tokens=0, max_output_tokens=0,
            max_seconds=agent.step_limit * 4 * agent.tool_timeout_s,
        )
    embed_price = _price_or_none(EMBEDDING_PRICE_NAME)
    if embed_price is not None:
        searches = agent.step_limit * 5 + 1
        estimate += searches * worst_case_cost(price=embed_price, prompt_tokens=128, max_output_tokens=0, max_seconds=5.0)
    return estimate


def _price_or_none(name: str):
    try:
        return price_current(model_name=name)
    except PriceMissing:
        return None


@transaction.atomic
def agent_run_start(
    *,
    team,
    agent: Agent,
    request: str = "",
    messages: list[dict] | None = None,
    user=None,
    api_key=None,
) -> AgentRun:
    """Reserve the worst case (402 when a budget would go over), create the run, enqueue it."""
    if agent.team_id != team.pk:
        raise ValidationFailed("that agent belongs to another team")
    messages = messages or []
    request = (request or "").strip()
    if not request and messages:
        request = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "").strip()
    if not request:
        raise ValidationFailed("the request is empty")
    if not agent.model_endpoint.enabled:
        raise ValidationFailed(f"model {agent.model_endpoint.name!r} is disabled")
    estimate = agent_run_worst_case(agent=agent, request=request, messages=messages)
    reservation = budget_reserve(
        team=team, user=user, api_key=api_key, estimate=estimate, description=f"agent {agent.name}",
        ttl_s=int(agent.step_limit * (settings.PARSIMONY_MODEL_WALL_TIME_S + agent.tool_timeout_s) * 1.5 + 300),
    )
    run = AgentRun.objects.create(
        team=team, agent=agent, user=user if getattr(user, "pk", None) else None, api_key=api_key,
        reservation=reservation, request=request, messages=messages,
    )
    run.job = job_start(
        kind="agents.run", team=team, created_by=user, params={"agent_run_id": run.pk}, total=agent.step_limit
    )
    run.save(update_fields=["job"])
    return run


# --------------------------------------------------------------------------- running


class _AnswerStream:
    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.text = ""
        self._flushed_at = 0.0

    def __call__(self, piece: str) -> None:
        if not self.text:
            # The final answer is stripped: stream it the same way, so the stream is its prefix.
            piece = piece.lstrip()
            if not piece:
                return
        self.text += piece
        now = time.monotonic()
        if now - self._flushed_at >= STREAM_FLUSH_S:
            self.flush()
            self._flushed_at = now

    def flush(self) -> None:
        AgentRun.objects.filter(pk=self.run_id).update(answer=self.text)


def _retrieval_callable(tool: Tool):
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
            {"title": hit.chunk.document.title, "text": hit.chunk.text[:800], "score": round(float(hit.score), 4)}
            for hit in hits
        ]

    return call


def tool_callable(*, tool: Tool):
    """A plain ``fn(arguments) -> result`` for one tool, with every database read done now.

    The function runs on a tool thread (see workers.agent.executor); only retrieval tools
    touch the database there, on that thread's own connection, closed when the call ends.
    """
    from workers.agent.http_tool import http_call
    from workers.agent.tools import get_callable

    if tool.kind == ToolKind.PYTHON:
        function = get_callable(tool.config.get("callable") or tool.name)
        return lambda arguments: function(**arguments)
    if tool.kind == ToolKind.HTTP:
        allowed = _allowed_hosts()
        url, method = tool.config.get("url", ""), tool.config.get("method", "GET")

        def call_http(arguments: dict[str, Any]) -> Any:
            return http_call(
                url=url, method=method, arguments=arguments, allowed_hosts=allowed,
                timeout_s=settings.PARSIMONY_AGENT_HTTP_TIMEOUT_S, max_bytes=settings.PARSIMONY_AGENT_HTTP_MAX_BYTES,
            )

        return call_http
    if tool.kind == ToolKind.RETRIEVAL:
        search = _retrieval_callable(tool)

        def call_retrieval(arguments: dict[str, Any]) -> Any:
            try:
                return search(arguments)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    connection.close()

        return call_retrieval
    raise ValidationFailed(f"tool {tool.name!r} has an unknown kind {tool.kind!r}")


def _ledger_total(run_id: int) -> Decimal:
    return UsageRecord.objects.filter(agent_run_id=run_id).aggregate(total=Sum("cost"))["total"] or ZERO


def _engine_config(agent: Agent):
    from workers.agent.loop import AgentConfig

    return AgentConfig(
        mode="openai" if agent.model_endpoint.kind == EndpointKind.OPENAI else "json",
        top_k=agent.top_k,
        threshold=agent.similarity_threshold,
        max_depth=agent.max_depth,
        step_limit=agent.step_limit,
        tool_timeout_s=agent.tool_timeout_s,
        system_prompt=agent.system_prompt,
    )


def _wire(run: AgentRun, context: LedgerContext, stream: _AnswerStream, progress):
    """The engine's three callables (and its hooks), bound to this run."""
    from apps.agents.selectors import tool_search
    from workers.agent.loop import ModelReply, ToolCallRequest, ToolHit, ToolSpec

    agent = run.agent
    endpoint = agent.model_endpoint
    callables: dict[int, Any] = {}
    embed_price = _price_or_none(EMBEDDING_PRICE_NAME)
    tool_price = _price_or_none(TOOL_PRICE_NAME)
    state = {"calls": 0}

    def model(messages, *, tools=None, on_token=None, purpose="step", max_tokens=None) -> ModelReply:
        cap = min(max_tokens or agent.max_output_tokens, agent.max_output_tokens)
        call = model_call(
            endpoint=endpoint, messages=messages, context=context, stage=Stage.AGENT_STEP,
            max_output_tokens=cap, on_token=on_token, reservation=run.reservation, tools=tools,
        )
        state["calls"] += 1
        progress(min(state["calls"], agent.step_limit), agent.step_limit, f"model call {state['calls']} ({purpose})")
        return ModelReply(
            text=call.text,
            finish_reason=call.finish_reason,
            tool_calls=[
                ToolCallRequest(
                    id=str(c.get("id") or ""),
                    name=str((c.get("function") or {}).get("name", "")),
                    arguments=(c.get("function") or {}).get("arguments") or "{}",
                )
                for c in call.tool_calls or []
            ],
        )

    def search(query: str, k: int) -> list[ToolHit]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        matches = tool_search(team=run.team, query=query, k=k, timings=timings)
        usage_record(
            context=context, stage=Stage.RETRIEVE, model_name=EMBEDDING_PRICE_NAME,
            usage=Usage(prompt_tokens=_estimate_tokens(query),
                        cpu_seconds=to_decimal(round(timings.get("embed_s", 0.0), 6))),
            price=embed_price, latency_ms=int((time.perf_counter() - started) * 1000), finish_reason="tool-search",
        )
        hits = []
        for match in matches:
            if match.tool.pk not in callables:
                callables[match.tool.pk] = tool_callable(tool=match.tool)
            hits.append(ToolHit(
                tool=ToolSpec(name=match.tool.name, description=match.tool.description,
                              parameters=match.tool.parameters, key=match.tool.pk),
                score=match.score,
            ))
        return hits

    def execute(spec, arguments: dict[str, Any]) -> Any:
        return callables[spec.key](arguments)

    def on_tool_done(spec, arguments, outcome) -> None:
        usage_record(
            context=context, stage=Stage.TOOL, model_name=f"tool/{spec.name}"[:200],
            usage=Usage(cpu_seconds=to_decimal(round(outcome.duration_ms / 1000, 6))),
            price=tool_price, latency_ms=outcome.duration_ms,
            finish_reason="timeout" if outcome.timed_out else ("error" if outcome.error else "ok"),
        )

    def on_update(steps: list[dict]) -> None:
        AgentRun.objects.filter(pk=run.pk).update(steps=steps)

    return model, search, execute, on_tool_done, on_update


def agent_run_execute(*, agent_run_id: int, progress=None) -> AgentRun | None:
    """Run an agent (in a worker). A finished run is left alone; a retried one starts over."""
    from workers.agent.loop import AgentLoop

    progress = progress or (lambda *args, **kwargs: None)
    run = (
        AgentRun.objects.select_related("agent", "agent__model_endpoint", "team", "user", "api_key", "reservation")
        .filter(pk=agent_run_id)
        .first()
    )
    if run is None:
        logger.warning("agent run %s does not exist", agent_run_id)
        return None
    if run.is_finished:
        return run
    if run.agent is None:
        AgentRun.objects.filter(pk=run.pk).update(status=AgentRunStatus.FAILED, error="the agent was deleted",
                                                  finished_at=timezone.now())
        if run.reservation_id:
            reservation_release(reservation=run.reservation)
        run.refresh_from_db()
        return run
    AgentRun.objects.filter(pk=run.pk).update(status=AgentRunStatus.RUNNING, answer="", error="", steps=[])
    started = time.perf_counter()
    context = LedgerContext(team=run.team, user=run.user, api_key=run.api_key, agent_run_id=run.pk)
    stream = _AnswerStream(run.pk)
    model, search, execute, on_tool_done, on_update = _wire(run, context, stream, progress)
    loop = AgentLoop(
        config=_engine_config(run.agent), model=model, search=search, execute=execute,
        on_update=on_update, on_tool_done=on_tool_done, on_answer_token=stream,
    )
    try:
        result = loop.run(run.request)
    except Exception as exc:
        actual = _ledger_total(run.pk)
        if run.reservation_id:
            if actual > 0:
                reservation_settle(reservation=run.reservation, actual=actual)
            else:
                reservation_release(reservation=run.reservation)
        AgentRun.objects.filter(pk=run.pk).update(
            status=AgentRunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:10_000], cost=actual,
            steps=loop.steps, tools_offered=loop.tools_offered, tools_called=loop.tools_called,
            model_calls=loop.model_calls, latency_ms=int((time.perf_counter() - started) * 1000),
            finished_at=timezone.now(), answer=stream.text,
        )
        raise
    records = UsageRecord.objects.filter(agent_run_id=run.pk)
    actual = records.aggregate(cost=Sum("cost"))["cost"] or ZERO
    tokens = records.filter(stage=Stage.AGENT_STEP).aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    if run.reservation_id:
        reservation_settle(reservation=run.reservation, actual=actual)
    AgentRun.objects.filter(pk=run.pk).update(
        status=AgentRunStatus.SUCCEEDED,
        answer=result.answer,
        finish_reason=result.finish_reason,
        steps=result.steps,
        tools_offered=result.tools_offered,
        tools_called=result.tools_called,
        model_calls=result.model_calls,
        prompt_tokens=tokens["prompt"] or 0,
        completion_tokens=tokens["completion"] or 0,
        cost=actual,
        latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    return run


def agent_run_wait(*, run: AgentRun, timeout_s: float, poll_s: float = 0.1) -> AgentRun:
    """Block until the run finishes or the timeout passes; returns the fresh row either way."""
    from apps.core.selectors import row_wait_finished

    return row_wait_finished(row=run, timeout_s=timeout_s, poll_s=poll_s)
