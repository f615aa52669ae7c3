"""Agent runs: reserve and start one (web process), execute it (worker), wait for it.

Each step holds its own reservation (cost path ``agent_step``): a step is one model call, the tool
calls it makes and the tool searches that follow it, and its hold grows with that work
(``_StepHolds``). ``agent_run_start`` reserves the first model call's bound (402 when a budget
refuses: no run), creates the AgentRun (``reservation``: that first hold) and its Job on the gpu
queue. In the worker, each later model call first settles the previous step's hold and opens its
own with the call's bound from its exact prompt; each tool search grows the step's hold by that
search's bound (its query's exact tokens), and each tool call's time is held in slices while it
runs (``workers.agent.executor.ToolTime``). When a budget refuses a step or a search the run ends
cleanly with its partial answer and finish reason "budget"; a refused slice stops the tool, billed
at most what the hold paid for, and ends the run the same way. The run's cost is the sum of its
ledger rows. ``agent_run_execute`` runs ``workers.agent.loop.AgentLoop`` with three callables
wired here: the model (every call through ``metering.model_call``, stage agent-step), the tool
search (the query embedding metered as retrieve), and tool execution (each call metered as a
"tool" ledger row with its latency). Steps and the answer stream into the AgentRun row.
"""

from __future__ import annotations

import json
import logging
import math
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
from apps.core.jobs import JobEnd, model_work_queue
from apps.core.services import job_run_end, job_start
from apps.core.streaming import AnswerStream
from apps.costs.cost_model import device_cost, device_seconds_bound, per_second_price
from apps.costs.defaults import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PRICE_NAME
from apps.costs.metering import model_call
from apps.costs.models import ZERO, EndpointKind, Stage, UsageRecord
from apps.costs.pricing import MONEY_QUANTUM, Usage, cost_of, to_decimal, worst_case_cost
from apps.costs.services import (
    BudgetExceeded,
    LedgerContext,
    PriceMissing,
    price_current,
    reservation_release,
)
from apps.costs.services.holds import Hold, hold_open, hold_resume
from apps.costs.tokens import embedding_tokens, prompt_check, prompt_tokens_bound, text_tokens_bound

logger = logging.getLogger(__name__)


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
    embed_price = _price_or_none(LOCAL_EMBEDDING_PRICE_NAME)
    if embed_price is not None:
        searches = agent.step_limit * 5 + 1
        embed_seconds, embed_device = device_seconds_bound(
            model=LOCAL_EMBEDDING_PRICE_NAME, tokens_in=128, price=embed_price
        )
        estimate += searches * (
            worst_case_cost(price=embed_price, prompt_tokens=128, max_output_tokens=0)
            + device_cost(price=embed_price, seconds=embed_seconds, device=embed_device)
        )
    return estimate


_TOOL_CALLS_PER_STEP = 4  # for hold lifetimes only: an OpenAI-mode reply may ask for a few tool calls at once


def _call_prompt(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The messages a call's prompt is counted from (tool definitions: one more message)."""
    return [*messages, {"role": "system", "content": json.dumps(tools)}] if tools else messages


def agent_first_step_bound(*, agent: Agent, request: str) -> Decimal:
    """What starting a run reserves: its first model call's bound (the decomposition), from the cost
    model, for exactly the prompt the worker will send (the endpoint's own tokenizer, no weights
    loaded). The searches and tool calls that follow grow the hold when they run (``_StepHolds``)."""
    from apps.costs import metering
    from workers.agent.decompose import decompose_messages
    from workers.agent.loop import DECOMPOSE_MAX_TOKENS

    endpoint = agent.model_endpoint
    messages = decompose_messages(request, max_steps=_engine_config(agent).max_subtasks)
    cap = min(DECOMPOSE_MAX_TOKENS, agent.max_output_tokens, endpoint.max_output_tokens)
    return metering.call_estimate(endpoint=endpoint, target=None, messages=messages, max_output_tokens=cap)[1]


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
    # Before any hold: a request that cannot fit the model's window (with a step's output cap) is a 400.
    endpoint = agent.model_endpoint
    prompt_check(endpoint, [{"role": "system", "content": agent.system_prompt}, *messages,
                            {"role": "user", "content": request}],
                 max_output_tokens=min(agent.max_output_tokens, endpoint.max_output_tokens))
    # The first hold may wait in the queue before its step runs: it lives as long as a whole run.
    reservation = hold_open(
        path="agent_step",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=agent_first_step_bound(agent=agent, request=request),
        description=f"agent {agent.name} step 1",
        ttl_s=_reservation_ttl_s(agent),
    ).reservation
    run = AgentRun.objects.create(
        team=team, agent=agent, user=user if getattr(user, "pk", None) else None, api_key=api_key,
        reservation=reservation, request=request, messages=messages,
    )
    run.job = job_start(
        kind="agents.run", team=team, created_by=user,
        params={"agent_run_id": run.pk, "reservation_id": reservation.pk}, total=agent.step_limit,
        # A remote model's steps wait on the network: on the io queue (tools run on threads beside them).
        queue=model_work_queue(remote=endpoint.kind != EndpointKind.LOCAL),
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
    """A run's step holds, each grown with its work ("holds grow with the work", docs/costs.md).

    A step is one model call and what follows it until the next: the tool calls it asks for and the
    tool searches. Its hold is opened with the model call's bound only (the first one when the run
    started; each later one settles the previous step's and opens its own from its exact prompt);
    each search and each slice of tool time then ``ensure``s the hold covers what was spent plus
    that search's or slice's bound. A refused step or search raises ``BudgetReached``; a refused
    slice stops the tool (``tool_extend`` returns False).
    """

    def __init__(self, run: AgentRun, context: LedgerContext) -> None:
        self.run = run
        self.context = context
        self.steps = 0
        self.tool_price = _price_or_none(TOOL_PRICE_NAME)
        self.current: Hold | None = (
            hold_resume(reservation=run.reservation, context=context, path="agent_step")
            if run.reservation_id else None
        )

    def before_call(self, target: Any, messages: list[dict], tools: list[dict] | None, cap: int) -> Hold | None:
        """The hold the next model call bills under (``target``: its resolved engine target)."""
        from apps.costs import metering
        from workers.agent.loop import BudgetReached

        self.steps += 1
        endpoint = self.run.agent.model_endpoint
        _, call_worst = metering.call_estimate(
            endpoint=endpoint, target=target, messages=_call_prompt(messages, tools),
            max_output_tokens=min(cap, endpoint.max_output_tokens),
        )
        try:
            if self.steps == 1 and self.current is not None:
                # Reserved by agent_run_start from the same prompt; grown if the cost model moved since.
                self.current.ensure(call_worst)
            else:
                self.settle()
                self.current = hold_open(
                    path="agent_step", context=self.context, estimate=call_worst,
                    description=f"agent {self.run.agent.name} step {self.steps}",
                    ttl_s=_step_ttl_s(self.run.agent),
                )
        except BudgetExceeded as exc:
            self.steps -= 1
            raise BudgetReached(exc.message) from exc
        return self.current

    def ensure(self, bound: Decimal, *, what: str) -> None:
        """Grow the current step's hold to cover ``bound`` more work (``BudgetReached`` when refused)."""
        from workers.agent.loop import BudgetReached

        if self.current is None or bound <= 0:
            return
        try:
            self.current.ensure(bound)
        except BudgetExceeded as exc:
            raise BudgetReached(exc.message, what=what) from exc

    # Tool time (``workers.agent.executor.ToolTime``): billed per CPU-second at the tool price.

    def _tool_per_second(self) -> Decimal:
        return per_second_price(price=self.tool_price, device="cpu") if self.tool_price is not None else ZERO

    def tool_paid_s(self) -> float:
        """The seconds of tool time the current hold already pays for (inf: tool time is free)."""
        per_second = self._tool_per_second()
        if self.current is None or per_second <= 0:
            return math.inf
        # One quantum short of the rest, so the row's rounding (half up, 10 places) cannot pass it.
        left = self.current.estimate - self.current.spent() - MONEY_QUANTUM
        return max(0.0, float(left / per_second) * (1 - 1e-9))

    def tool_extend(self, seconds: float) -> bool:
        """Make the current hold pay for ``seconds`` of the running tool call; False when a budget refuses."""
        if self.current is None or self._tool_per_second() <= 0:
            return True
        try:
            self.current.ensure(_tool_cost(self.tool_price, math.ceil(seconds * 1e6) / 1e6))
        except BudgetExceeded:
            return False
        return True

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


def _tool_cost(price, seconds: float) -> Decimal:
    return cost_of(usage=Usage(cpu_seconds=to_decimal(seconds)), price=price)


def _tool_seconds_billed(outcome) -> float:
    """A tool call's billed CPU-seconds: its duration, at most what its hold paid for (6 places, down)."""
    seconds = outcome.duration_ms / 1000
    if outcome.paid_s is not None:
        seconds = min(seconds, outcome.paid_s)
    return math.floor(seconds * 1e6) / 1e6


def _wire(run: AgentRun, context: LedgerContext, progress: Progress, holds: _StepHolds):
    """The engine's three callables (and its hooks), bound to this run."""
    from apps.agents.selectors import tool_search
    from apps.corpora.services.embedding import embedding_bound
    from workers.agent.executor import ToolTime
    from workers.agent.loop import ModelReply, ToolCallRequest, ToolHit, ToolSpec

    agent = run.agent
    endpoint = agent.model_endpoint
    callables: dict[int, Any] = {}
    embed_price = _price_or_none(LOCAL_EMBEDDING_PRICE_NAME)
    state = {"calls": 0}

    def model(messages, *, tools=None, on_token=None, purpose="step", max_tokens=None, grammar=None) -> ModelReply:
        cap = min(max_tokens or agent.max_output_tokens, agent.max_output_tokens)

        def reserve(target):
            hold = holds.before_call(target, messages, tools, cap)
            return hold.reservation if hold is not None else None

        call = model_call(
            endpoint=endpoint, messages=messages, context=context, stage=Stage.AGENT_STEP,
            max_output_tokens=cap, on_token=on_token, tools=tools, reserve=reserve, grammar=grammar,
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
        # Its query's exact tokens (the embedder's tokenizer, cached): the hold grows by this search's bound.
        tokens = embedding_tokens(LOCAL_EMBEDDING_MODEL, [query]) if query.strip() else 0
        holds.ensure(
            embedding_bound(model_name=LOCAL_EMBEDDING_MODEL, tokens=tokens, price=embed_price),
            what="another tool search",
        )
        started = time.perf_counter()
        timings: dict[str, float] = {}
        matches = tool_search(team=run.team, query=query, k=k, timings=timings)
        holds.record(
            stage=Stage.RETRIEVE, model_name=LOCAL_EMBEDDING_PRICE_NAME,
            usage=Usage(prompt_tokens=tokens, cpu_seconds=to_decimal(round(timings.get("embed_s", 0.0), 6))),
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
        if outcome.budget_stopped and outcome.paid_s == 0:
            return  # refused before it started: nothing ran
        reason = "budget" if outcome.budget_stopped else "timeout" if outcome.timed_out else "error"
        reason = reason if outcome.error else "ok"
        holds.record(
            stage=Stage.TOOL, model_name=f"tool/{spec.name}"[:200],
            usage=Usage(cpu_seconds=to_decimal(_tool_seconds_billed(outcome))),
            price=holds.tool_price, latency_ms=outcome.duration_ms, finish_reason=reason,
        )

    def on_update(steps: list[dict]) -> None:
        AgentRun.objects.filter(pk=run.pk).update(steps=steps)

    tool_time = ToolTime(paid_s=holds.tool_paid_s, extend=holds.tool_extend)
    return model, search, execute, on_tool_done, on_update, tool_time


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
    from workers.agent.loop import tool_outcome

    holds.settle()
    actual = UsageRecord.objects.filter(agent_run_id=run.pk).total_cost()
    AgentRun.objects.filter(pk=run.pk).update(
        status=AgentRunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:10_000], cost=actual,
        steps=loop.steps, tool_outcome=tool_outcome(loop.steps),
        tools_offered=loop.tools_offered, tools_called=loop.tools_called,
        model_calls=loop.model_calls, latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(), answer=stream.text,
    )


def _record_success(run: AgentRun, result, started: float, holds: _StepHolds) -> None:
    """Settle the last step's hold and store the answer, tokens and cost (the sum of the run's rows)."""
    holds.settle()
    records = UsageRecord.objects.filter(agent_run_id=run.pk)
    actual = records.total_cost()
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
        tool_outcome=result.tool_outcome,
        model_calls=result.model_calls,
        prompt_tokens=tokens["prompt"] or 0,
        completion_tokens=tokens["completion"] or 0,
        cost=actual,
        latency_ms=int((time.perf_counter() - started) * 1000),
        finished_at=timezone.now(),
    )


def agent_job_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """The agent job ended without its task finishing the run (``apps.core.services.job_end``): the run
    is failed with the reason, at the cost of the ledger rows it wrote (its step holds: ``job_holds_end``)."""
    for run_id in AgentRun.objects.filter(job=job).values_list("pk", flat=True):
        spent = UsageRecord.objects.filter(agent_run_id=run_id).total_cost()
        job_run_end(runs=AgentRun.objects.filter(pk=run_id), outcome=outcome, reason=reason, cost=spent)


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
    model, search, execute, on_tool_done, on_update, tool_time = _wire(run, context, progress, holds)
    loop = AgentLoop(
        config=_engine_config(run.agent), model=model, search=search, execute=execute,
        on_update=on_update, on_tool_done=on_tool_done, on_answer_token=stream, tool_time=tool_time,
    )
    try:
        result = loop.run(run.request, history=_agent_history(run))
    except Exception as exc:
        _record_failure(run, loop, exc, stream, started, holds)
        raise
    _record_success(run, result, started, holds)
    run.refresh_from_db()
    return run


# The conversation an agent run reads (OpenAI-compatible calls): its newest turns within this many tokens.
AGENT_HISTORY_TOKEN_BUDGET = 512


def _agent_history(run: AgentRun) -> list[dict]:
    """The messages before the run's last user message, fitted to AGENT_HISTORY_TOKEN_BUDGET (older turns
    dropped whole, ``workers.rag.history.history_fit``); each step that reads them holds for them first."""
    from apps.costs.tokens import prompt_tokens_bound
    from workers.rag.history import history_fit

    messages = list(run.messages or [])
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if not last_user:
        return []
    endpoint = run.agent.model_endpoint
    return history_fit(messages[:last_user], budget=AGENT_HISTORY_TOKEN_BUDGET,
                       count=lambda kept: prompt_tokens_bound(endpoint, kept)).messages


def agent_run_wait(*, run: AgentRun, timeout_s: float, poll_s: float = 0.1) -> AgentRun:
    """Block until the run finishes or the timeout passes; returns the fresh row either way."""
    from apps.core.selectors import row_wait_finished

    return row_wait_finished(row=run, timeout_s=timeout_s, poll_s=poll_s)
