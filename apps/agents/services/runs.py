"""Agent runs: reserve and start one (web process), execute it (worker), wait for it.

Each step holds its own reservation (cost path ``agent_step``): a step is one model call, the tool
calls it makes and the tool searches that follow it. ``agent_run_start`` reserves the first step's
bound (402 when a budget refuses: no run), creates the AgentRun (``reservation``: that first hold)
and its Job on the gpu queue. In the worker, each later model call first settles the previous
step's hold and reserves its own bound from its exact prompt; when a budget refuses it the run
ends cleanly with its partial answer and finish reason "budget". The run's cost is the sum of its
ledger rows. ``agent_run_execute`` runs ``workers.agent.loop.AgentLoop`` with three callables
wired here: the model (every call through ``metering.model_call``, stage agent-step), the tool
search (the query embedding metered as retrieve), and tool execution (each call metered as a
"tool" ledger row with its latency). Steps and the answer stream into the AgentRun row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.agents.models import Agent, AgentRun, AgentRunStatus
from apps.agents.services.tool_calls import tool_callable
from apps.agents.services.tools import TOOL_PRICE_NAME
from apps.core.errors import ValidationFailed
from apps.core.services import job_start
from apps.core.streaming import AnswerStream
from apps.costs.cost_model import device_cost, device_seconds_bound
from apps.costs.metering import model_call
from apps.costs.models import ZERO, EndpointKind, Stage, UsageRecord
from apps.costs.pricing import Usage, to_decimal, worst_case_cost
from apps.costs.services import (
    BudgetExceeded,
    LedgerContext,
    PriceMissing,
    price_current,
    reservation_release,
)
from apps.costs.services.holds import Hold, hold_open, hold_resume
from apps.costs.tokens import embedding_tokens, prompt_tokens_bound, text_tokens_bound

logger = logging.getLogger(__name__)

EMBEDDING_PRICE_NAME = "local/all-minilm-l6-v2"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # what EMBEDDING_PRICE_NAME prices

Progress = Callable[..., None]


# --------------------------------------------------------------------------- starting a run


def _price_or_none(name: str):
    try:
        return price_current(model_name=name)
    except PriceMissing:
        return None


def agent_run_worst_case(*, agent: Agent, request: str, messages: list[dict] | None = None) -> Decimal:
    """The most a run can cost: step_limit model calls at a full prompt and every output token, plus tools."""
    endpoint = agent.model_endpoint
    price = price_current(model_name=endpoint.price_name)
    # Per call: system prompt, request, up to top_k tool definitions per search level, the growing
    # conversation (each earlier step's output and tool result), capped by the context window.
    # The generator's own tokens (apps.costs.tokens); the request can appear twice (as the task and
    # as the last user message).
    prompt = 64 + prompt_tokens_bound(endpoint, [
        {"role": "system", "content": agent.system_prompt}, *(messages or []), {"role": "user", "content": request},
    ]) + text_tokens_bound(endpoint, request)
    prompt += agent.top_k * (agent.max_depth + 1) * 200
    prompt += agent.step_limit * (agent.max_output_tokens + 200)
    prompt = min(prompt, endpoint.context_window)
    is_local = endpoint.kind == EndpointKind.LOCAL
    output = min(agent.max_output_tokens, endpoint.max_output_tokens)
    per_call = worst_case_cost(price=price, prompt_tokens=prompt, max_output_tokens=output)
    if is_local:  # device time: the cost model's bound, at the device of the worker that would run it
        seconds, device = device_seconds_bound(
            model=endpoint.price_name, tokens_in=prompt, tokens_out=output, price=price
        )
        per_call += device_cost(price=price, seconds=seconds, device=device)
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
        embed_seconds, embed_device = device_seconds_bound(
            model=EMBEDDING_PRICE_NAME, tokens_in=128, price=embed_price
        )
        estimate += searches * (
            worst_case_cost(price=embed_price, prompt_tokens=128, max_output_tokens=0)
            + device_cost(price=embed_price, seconds=embed_seconds, device=embed_device)
        )
    return estimate


# Tool searches between two model calls: one per subtask (at most max_subtasks) and one more level.
_SEARCHES_PER_STEP = 6
_TOOL_CALLS_PER_STEP = 4  # an OpenAI-mode reply may ask for a few tool calls at once
_QUERY_TOKENS_BOUND = 256  # the tool embedder truncates a query to this many tokens


def agent_step_bound(*, agent: Agent, call_worst_case: Decimal) -> Decimal:
    """What one step reserves: its model call's worst case, plus the tool calls it can make (each up
    to the tool timeout) and the tool searches that can follow it."""
    from apps.agents.services.tools import TOOL_EMBEDDING_PRICE_NAME
    from apps.corpora.services.embedding import embedding_bound

    estimate = call_worst_case
    tool_price = _price_or_none(TOOL_PRICE_NAME)
    if tool_price is not None:
        estimate += worst_case_cost(
            price=tool_price, prompt_tokens=0, max_output_tokens=0,
            max_seconds=_TOOL_CALLS_PER_STEP * agent.tool_timeout_s,
        )
    embed_price = _price_or_none(TOOL_EMBEDDING_PRICE_NAME)
    if embed_price is not None:
        estimate += _SEARCHES_PER_STEP * embedding_bound(
            model_name="all-MiniLM-L6-v2", tokens=_QUERY_TOKENS_BOUND, price=embed_price
        )
    return estimate


def _first_prompt_tokens(agent: Agent, request: str, messages: list[dict]) -> int:
    """Prompt tokens of the run's first model call (the decomposition), in the web process.

    Counted by the endpoint's own counter where that needs no model load (remote endpoints); a
    local model's prompt is bounded by its UTF-8 bytes plus the chat template's tokens per message
    instead of loading the model here.
    """
    from apps.costs import metering
    from workers.agent.decompose import decompose_messages
    from workers.runtime.meter import count_chat_tokens

    first = decompose_messages(request, max_steps=_engine_config(agent).max_subtasks)
    first = [*first, *({"role": "user", "content": str(m.get("content", ""))} for m in messages)]
    endpoint = agent.model_endpoint
    if endpoint.kind == EndpointKind.OPENAI:
        return count_chat_tokens(metering.endpoint_target(endpoint), first)
    return 16 + sum(len(str(m.get("content", "")).encode("utf-8")) + 8 for m in first)


def agent_first_step_bound(*, agent: Agent, request: str, messages: list[dict] | None = None) -> Decimal:
    """What starting a run reserves: its first step's bound (the decomposition call and what follows it)."""
    from workers.agent.loop import DECOMPOSE_MAX_TOKENS

    endpoint = agent.model_endpoint
    prompt = min(_first_prompt_tokens(agent, request, messages or []), endpoint.context_window)
    cap = min(DECOMPOSE_MAX_TOKENS, agent.max_output_tokens, endpoint.max_output_tokens)
    call = worst_case_cost(
        price=price_current(model_name=endpoint.price_name),
        prompt_tokens=prompt,
        max_output_tokens=cap,
        max_seconds=settings.PARSIMONY_MODEL_WALL_TIME_S if endpoint.kind == EndpointKind.LOCAL else 0.0,
        on_gpu=settings.PARSIMONY_WORKER_DEVICE == "cuda",
    )
    return agent_step_bound(agent=agent, call_worst_case=call)


def _step_ttl_s(agent: Agent) -> int:
    """How long a step's hold lives: its model call and its tool calls, with room to spare."""
    return int((settings.PARSIMONY_MODEL_WALL_TIME_S + _TOOL_CALLS_PER_STEP * agent.tool_timeout_s) * 1.5 + 300)


def _reservation_ttl_s(agent: Agent) -> int:
    """How long the hold lives: every step at the longest model call and tool call, with room to spare."""
    return int(agent.step_limit * (settings.PARSIMONY_MODEL_WALL_TIME_S + agent.tool_timeout_s) * 1.5 + 300)


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
    """Reserve the first step (402 when a budget would go over), create the run, enqueue it."""
    if agent.team_id != team.pk:
        raise ValidationFailed("that agent belongs to another team")
    messages = messages or []
    request = (request or "").strip()
    if not request and messages:
        last_user = (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user")
        request = next(last_user, "").strip()
    if not request:
        raise ValidationFailed("the request is empty")
    if not agent.model_endpoint.enabled:
        raise ValidationFailed(f"model {agent.model_endpoint.name!r} is disabled")
    # The first hold may wait in the queue before its step runs: it lives as long as a whole run.
    reservation = hold_open(
        path="agent_step",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=agent_first_step_bound(agent=agent, request=request, messages=messages),
        description=f"agent {agent.name} step 1",
        ttl_s=_reservation_ttl_s(agent),
    ).reservation
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


class _StepHolds:
    """A run's step holds: the first was reserved when the run started; each later model call settles
    the previous step's and reserves its own from its exact prompt (``BudgetReached`` when refused)."""

    def __init__(self, run: AgentRun, context: LedgerContext) -> None:
        self.run = run
        self.context = context
        self.steps = 0
        self.current: Hold | None = (
            hold_resume(reservation=run.reservation, context=context, path="agent_step")
            if run.reservation_id else None
        )

    def before_call(self, target: Any, messages: list[dict], tools: list[dict] | None, cap: int) -> Hold | None:
        """The hold the next model call bills under (``target``: its resolved engine target)."""
        from apps.costs import metering
        from workers.agent.loop import BudgetReached

        self.steps += 1
        if self.steps == 1 and self.current is not None:
            return self.current
        self.settle()
        endpoint = self.run.agent.model_endpoint
        # Tool definitions are part of the prompt: counted as one more message.
        counted = [*messages, {"role": "system", "content": json.dumps(tools)}] if tools else messages
        _, call_worst = metering.call_estimate(
            endpoint=endpoint, target=target, messages=counted, max_output_tokens=min(cap, endpoint.max_output_tokens)
        )
        try:
            self.current = hold_open(
                path="agent_step", context=self.context,
                estimate=agent_step_bound(agent=self.run.agent, call_worst_case=call_worst),
                description=f"agent {self.run.agent.name} step {self.steps}",
                ttl_s=_step_ttl_s(self.run.agent),
            )
        except BudgetExceeded as exc:
            self.steps -= 1
            raise BudgetReached(exc.message) from exc
        return self.current

    def record(self, **row: Any) -> None:
        """A ledger row of the current step (a search before the first call: under the first hold)."""
        if self.current is not None:
            self.current.record(**row)
        else:
            from apps.costs.services import usage_record

            usage_record(context=self.context, **row)

    def settle(self) -> None:
        """Book the current step's rows (none: release it)."""
        if self.current is not None:
            self.current.settle()
            self.current = None


def _wire(run: AgentRun, context: LedgerContext, progress: Progress, holds: _StepHolds):
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

        def reserve(target):
            hold = holds.before_call(target, messages, tools, cap)
            return hold.reservation if hold is not None else None

        call = model_call(
            endpoint=endpoint, messages=messages, context=context, stage=Stage.AGENT_STEP,
            max_output_tokens=cap, on_token=on_token, tools=tools, reserve=reserve,
        )
        state["calls"] += 1
        calls = state["calls"]
        progress(min(calls, agent.step_limit), agent.step_limit, f"model call {calls} ({purpose})")
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
        holds.record(
            stage=Stage.RETRIEVE, model_name=EMBEDDING_PRICE_NAME,
            usage=Usage(prompt_tokens=embedding_tokens(DEFAULT_EMBEDDING_MODEL, [query]),
                        cpu_seconds=to_decimal(round(timings.get("embed_s", 0.0), 6))),
            price=embed_price, latency_ms=int((time.perf_counter() - started) * 1000),
            finish_reason="tool-search",
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
        holds.record(
            stage=Stage.TOOL, model_name=f"tool/{spec.name}"[:200],
            usage=Usage(cpu_seconds=to_decimal(round(outcome.duration_ms / 1000, 6))),
            price=tool_price, latency_ms=outcome.duration_ms,
            finish_reason="timeout" if outcome.timed_out else ("error" if outcome.error else "ok"),
        )

    def on_update(steps: list[dict]) -> None:
        AgentRun.objects.filter(pk=run.pk).update(steps=steps)

    return model, search, execute, on_tool_done, on_update


def _fail_orphan(run: AgentRun) -> AgentRun:
    """The run's agent was deleted before it started: fail it and give the hold back."""
    AgentRun.objects.filter(pk=run.pk).update(
        status=AgentRunStatus.FAILED, error="the agent was deleted", finished_at=timezone.now()
    )
    if run.reservation_id:
        reservation_release(reservation=run.reservation)
    run.refresh_from_db()
    return run


def _record_failure(
    run: AgentRun, loop, exc: Exception, stream: AnswerStream, started: float, holds: _StepHolds
) -> None:
    """Settle what the current step billed (or release its hold) and store the failure."""
    holds.settle()
    actual = UsageRecord.objects.filter(agent_run_id=run.pk).aggregate(total=Sum("cost"))["total"] or ZERO
    AgentRun.objects.filter(pk=run.pk).update(
        status=AgentRunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:10_000], cost=actual,
        steps=loop.steps, tools_offered=loop.tools_offered, tools_called=loop.tools_called,
        model_calls=loop.model_calls, latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(), answer=stream.text,
    )


def _record_success(run: AgentRun, result, started: float, holds: _StepHolds) -> None:
    """Settle the last step's hold and store the answer, tokens and cost (the sum of the run's rows)."""
    holds.settle()
    records = UsageRecord.objects.filter(agent_run_id=run.pk)
    actual = records.aggregate(cost=Sum("cost"))["cost"] or ZERO
    tokens = records.filter(stage=Stage.AGENT_STEP).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
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


def agent_run_execute(*, agent_run_id: int, progress: Progress | None = None) -> AgentRun | None:
    """Run an agent (in a worker). A finished run is left alone; a retried one starts over."""
    from workers.agent.loop import AgentLoop

    progress = progress or (lambda *args, **kwargs: None)
    run = (
        AgentRun.objects.select_related(
            "agent", "agent__model_endpoint", "team", "user", "api_key", "reservation"
        )
        .filter(pk=agent_run_id)
        .first()
    )
    if run is None:
        logger.warning("agent run %s does not exist", agent_run_id)
        return None
    if run.is_finished:
        return run
    if run.agent is None:
        return _fail_orphan(run)
    AgentRun.objects.filter(pk=run.pk).update(status=AgentRunStatus.RUNNING, answer="", error="", steps=[])
    started = time.perf_counter()
    context = LedgerContext(team=run.team, user=run.user, api_key=run.api_key, agent_run_id=run.pk)
    # The final answer is stripped: the stream drops leading white space too, so it is its prefix.
    stream = AnswerStream(AgentRun, run.pk, strip_leading=True)
    holds = _StepHolds(run, context)
    model, search, execute, on_tool_done, on_update = _wire(run, context, progress, holds)
    loop = AgentLoop(
        config=_engine_config(run.agent), model=model, search=search, execute=execute,
        on_update=on_update, on_tool_done=on_tool_done, on_answer_token=stream,
    )
    try:
        result = loop.run(run.request)
    except Exception as exc:
        _record_failure(run, loop, exc, stream, started, holds)
        raise
    _record_success(run, result, started, holds)
    run.refresh_from_db()
    return run


def agent_run_wait(*, run: AgentRun, timeout_s: float, poll_s: float = 0.1) -> AgentRun:
    """Block until the run finishes or the timeout passes; returns the fresh row either way."""
    from apps.core.selectors import row_wait_finished

    return row_wait_finished(row=run, timeout_s=timeout_s, poll_s=poll_s)
