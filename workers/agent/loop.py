"""The agent loop (after Tulip Agent): decompose, search the tool library, offer only what was found.

Django-free: the caller passes three plain callables (the model, the library search, the tool
executor) and gets plain data back, so the service keeps persistence and billing and the loop can
be tested and benchmarked alone. Offering only the tools found keeps the prompt to a few hundred
tokens where the whole library would take thousands (docs/agents.md). The steps are spelled out on
`AgentLoop`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.agent.decompose import decompose_messages, subtasks_or_whole
from workers.agent.executor import ToolOutcome, ToolTime, call_with_timeout, result_text
from workers.agent.schema import compact_definition, tool_definition, validate_arguments
from workers.agent.toolcall import (
    DEMO_TURNS,
    JSON_SYSTEM,
    NO_TOOL_YET,
    call_skeleton,
    corrective_message,
    parse_reply,
)
from workers.runtime.grammar import tool_call_schema

MODES = ("json", "openai")
DECOMPOSE_MAX_TOKENS = 128


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    key: Any = None  # the caller's handle, e.g. a Tool row id


@dataclass(frozen=True)
class ToolHit:
    tool: ToolSpec
    score: float


@dataclass
class ToolCallRequest:
    name: str
    arguments: Any  # a dict, or the JSON string an OpenAI endpoint sent
    id: str = ""


@dataclass
class ModelReply:
    text: str
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    finish_reason: str = "stop"


@dataclass(frozen=True)
class AgentConfig:
    mode: str = "json"
    top_k: int = 5
    threshold: float = 0.3
    max_depth: int = 1
    step_limit: int = 8
    tool_timeout_s: float = 10.0
    max_subtasks: int = 5
    system_prompt: str = ""
    decompose: bool = True
    # JSON mode: decode each step under a grammar built from the offered tools' schemas (local models;
    # the model callable receives it as ``grammar=``). The first step of a subtask that was offered
    # tools must call one (no answer branch); after a result, a call or the answer.
    constrained: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown agent mode {self.mode!r} (valid: {', '.join(MODES)})")
        if self.step_limit < 1:
            raise ValueError("step_limit must be at least 1")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if self.max_depth < 0:
            raise ValueError("max_depth must be at least 0")


@dataclass
class AgentResult:
    answer: str
    finish_reason: str
    steps: list[dict[str, Any]]
    tools_offered: list[str]
    tools_called: list[str]
    model_calls: int
    tool_outcome: str = ""


# What a run did with its tools (AgentRun.tool_outcome), worst first: a run labelled anything but
# "tools_called" or "no_tools_found" must not read as a plain success.
TOOL_FAILED = "tool_failed"  # a tool call failed (error, timeout, refused) and no later call of its subtask succeeded
NO_TOOL_CALLED = "no_tool_called"  # a subtask was offered tools (its plan needed one) and called none
TOOLS_CALLED = "tools_called"  # every subtask offered tools called one, and the last call of each succeeded
NO_TOOLS_FOUND = "no_tools_found"  # no tool was offered: the library had nothing for the request
TOOL_OUTCOMES = (TOOL_FAILED, NO_TOOL_CALLED, TOOLS_CALLED, NO_TOOLS_FOUND)


def tool_outcome(steps: list[dict[str, Any]]) -> str:
    """The run's tool outcome from its steps (see ``TOOL_OUTCOMES``)."""
    failed = missing = offered = False
    for step in steps:
        if step.get("type") != "subtask" or not step.get("tools_offered"):
            continue
        offered = True
        calls = [call for record in step.get("calls", []) for call in record.get("tool_calls", [])]
        if not calls:
            missing = True
        elif calls[-1].get("error"):
            failed = True
    if failed:
        return TOOL_FAILED
    if missing:
        return NO_TOOL_CALLED
    return TOOLS_CALLED if offered else NO_TOOLS_FOUND


class StepLimitReached(Exception):
    pass


class BudgetReached(Exception):
    """Raised by the ``model`` or ``search`` callable when the budget does not cover the next step
    (or by the loop when it stopped a tool the budget no longer paid for): the run stops and
    answers with what it has (finish_reason "budget"), like at the step limit. ``what``: what the
    budget did not cover, for the answer."""

    def __init__(self, message: str = "", *, what: str = "another step") -> None:
        super().__init__(message)
        self.what = what


ModelFn = Callable[..., ModelReply]
SearchFn = Callable[[str, int], list[ToolHit]]
ExecuteFn = Callable[[ToolSpec, dict[str, Any]], Any]
ToolDoneFn = Callable[[ToolSpec, dict[str, Any], ToolOutcome], None]


def _key(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


class AgentLoop:
    """Decompose, search the library, solve with only the tools found, answer; bounded by ``step_limit``.

    The callables:

        model(messages, *, tools=None, on_token=None, purpose="step", max_tokens=None[, grammar]) -> ModelReply
                                                      grammar: a JSON schema the reply must follow (JSON
                                                      mode, ``constrained``; a local model decodes under it)
        search(query, k) -> list[ToolHit]            best first, with cosine scores
        execute(tool, arguments) -> Any               runs one tool (raises on failure)
        tool_time: ToolTime | None                    how tool time is paid for (None: unmetered)

    1. Decompose the request into subtasks (one model call, a numbered list; junk -> the whole
       request as the only subtask).
    2. For each subtask, search the library (top-k; hits below the similarity threshold are
       dropped). When nothing passes, decompose that subtask further and search its parts, down to
       ``max_depth`` levels.
    3. Solve the subtask with ONLY the tools found offered to the model: OpenAI-style tool calls
       (``mode="openai"``, remote endpoints: their native tool calling) or the JSON format
       (``mode="json"``, local models), decoded under a grammar built from the offered tools' schemas
       (``constrained``: every reply is a schema-valid call to an offered tool or, once a tool
       result is in, the answer; one corrective retry on an invalid reply). Each tool runs on its
       own thread under a timeout, for as long as ``tool_time`` pays (held in slices,
       ``workers.agent.executor``).
    4. Answer: a single solved subtask's answer is the answer; otherwise one more model call
       composes it from the results (streamed through ``on_answer_token``).

    ``step_limit`` caps the model calls of a run (decompositions included); at the cap the run
    stops and answers with what it has (finish_reason "step_limit"). A ``model`` callable that
    raises ``BudgetReached`` (its budget does not cover the call) stops it the same way
    (finish_reason "budget"), and so do a ``search`` that raises it and a tool call stopped
    because its budget refused more time (the tool's error is recorded in its step).

    The result's ``tool_outcome`` labels what the run did with its tools (``TOOL_OUTCOMES``): a run
    whose subtask was offered tools and called none, or whose tool failed, is not a plain success.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        model: ModelFn,
        search: SearchFn,
        execute: ExecuteFn,
        on_update: Callable[[list[dict[str, Any]]], None] | None = None,
        on_tool_done: ToolDoneFn | None = None,
        on_answer_token: Callable[[str], None] | None = None,
        tool_time: ToolTime | None = None,
    ) -> None:
        self.config = config
        self._tool_time = tool_time
        self._model_fn = model
        self._search_fn = search
        self._execute_fn = execute
        self._on_update = on_update
        self._on_tool_done = on_tool_done
        self._on_answer_token = on_answer_token
        self.steps: list[dict[str, Any]] = []
        self.model_calls = 0
        self.tools_offered: list[str] = []
        self.tools_called: list[str] = []
        self.request = ""
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ plumbing

    def _update(self) -> None:
        if self._on_update is not None:
            self._on_update(self.steps)

    def _model(self, messages: list[dict[str, Any]], **kwargs: Any) -> ModelReply:
        if self.model_calls >= self.config.step_limit:
            raise StepLimitReached(f"the step limit of {self.config.step_limit} model calls is reached")
        self.model_calls += 1
        try:
            return self._model_fn(messages, **kwargs)
        except BudgetReached:
            self.model_calls -= 1  # refused before it ran
            raise

    def _search(self, query: str, depth: int) -> tuple[list[ToolHit], dict[str, Any]]:
        hits = list(self._search_fn(query, self.config.top_k))[: self.config.top_k]
        passed = [hit for hit in hits if hit.score >= self.config.threshold]
        record = {
            "query": query,
            "depth": depth,
            "hits": [
                {"name": h.tool.name, "score": round(float(h.score), 4), "passed": h.score >= self.config.threshold}
                for h in hits
            ],
        }
        return passed, record

    def _decompose(self, task: str, depth: int) -> tuple[list[str], dict[str, Any]]:
        reply = self._model(
            decompose_messages(task, max_steps=self.config.max_subtasks),
            purpose="decompose",
            max_tokens=DECOMPOSE_MAX_TOKENS,
        )
        subtasks, fell_back = subtasks_or_whole(
            reply.text, task=task, max_steps=self.config.max_subtasks, context=self.request if depth else ""
        )
        return subtasks, {
            "task": task, "depth": depth, "model_output": reply.text, "subtasks": subtasks, "fell_back": fell_back,
        }

    # ------------------------------------------------------------------ tool search

    def find_tools(self, subtask: str, step: dict[str, Any], depth: int = 0) -> list[ToolHit]:
        """Tools for ``subtask``: its own search hits, else the hits of its parts (bounded depth)."""
        hits, record = self._search(subtask, depth)
        step["searches"].append(record)
        self._update()
        # Splitting further costs a call and must leave room to solve: at least two calls after it.
        if hits or depth >= self.config.max_depth or self.config.step_limit - self.model_calls < 3:
            return hits
        parts, decomposition = self._decompose(subtask, depth + 1)
        step["decompositions"].append(decomposition)
        self._update()
        if decomposition["fell_back"] or [_key(p) for p in parts] == [_key(subtask)]:
            return []
        best: dict[str, ToolHit] = {}
        for part in parts:
            for hit in self.find_tools(part, step, depth + 1):
                if hit.tool.name not in best or hit.score > best[hit.tool.name].score:
                    best[hit.tool.name] = hit
        return sorted(best.values(), key=lambda h: -h.score)

    # ------------------------------------------------------------------ tools

    def _run_tool(self, tool: ToolSpec, arguments: dict[str, Any], record: dict[str, Any]) -> ToolOutcome:
        outcome = call_with_timeout(
            lambda: self._execute_fn(tool, arguments),
            timeout_s=self.config.tool_timeout_s,
            name=tool.name,
            time_paid=self._tool_time,
        )
        self.tools_called.append(tool.name)
        record["tool_calls"].append(
            {
                "tool": tool.name,
                "arguments": arguments,
                "result": outcome.result if outcome.ok else None,
                "error": outcome.error,
                "duration_ms": outcome.duration_ms,
            }
        )
        if self._on_tool_done is not None:
            self._on_tool_done(tool, arguments, outcome)
        self._update()
        if outcome.budget_stopped:
            # Telling the model would take a model call, which the budget cannot pay either.
            raise BudgetReached(f"{tool.name}: {outcome.error}", what=f"more time for the tool {tool.name}")
        return outcome

    # ------------------------------------------------------------------ solving one subtask

    def _task_prompt(self, request: str, subtask: str, results: list[tuple[str, str]]) -> str:
        lines = [f"Task: {request}"]
        if results:
            lines.append("Results of the earlier steps:")
            lines += [f"- {step}: {result}" for step, result in results]
        if _key(subtask) != _key(request):
            lines.append(f"Current step: {subtask}")
        return "\n".join(lines)

    def _system(self, text: str) -> str:
        prompt = self.config.system_prompt.strip()
        return f"{prompt}\n\n{text}" if prompt else text

    def _solve_json(self, step: dict[str, Any], tools: list[ToolSpec], user: str) -> str:
        by_name = {tool.name: tool for tool in tools}
        schemas = {tool.name: tool.parameters for tool in tools}
        # The best search hit is listed last, next to the task: small models lean to the nearest tool
        # (SmolLM2 picked the last-listed tool in 2 of 4 wrong calls, tulip tasks E.000-E.007).
        listing = "\n".join(
            compact_definition(name=t.name, description=t.description, parameters=t.parameters)
            for t in reversed(tools)
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system(JSON_SYSTEM)},
            *[dict(turn) for turn in DEMO_TURNS],
            {"role": "user", "content": f"Tools:\n{listing}\n{user}"},
        ]
        retried = False
        last_result: str | None = None
        done: dict[str, str] = {}
        offered = [(tool.name, tool.parameters) for tool in tools]
        called = False  # a tool ran (its result or its error is in the conversation)
        while True:
            extra: dict[str, Any] = {}
            if self.config.constrained:
                # No answer before a tool ran: a small model's own arithmetic is what the tool is for.
                extra["grammar"] = tool_call_schema(offered, allow_answer=called)
            reply = self._model(messages, purpose="step", **extra)
            record: dict[str, Any] = {"model_output": reply.text, "tool_calls": []}
            step["calls"].append(record)
            parsed = parse_reply(reply.text, schemas=schemas)
            record["valid"] = parsed.kind != "invalid"
            if self.config.constrained:
                record["constrained"] = True
            if parsed.kind == "answer" and not called and not retried:
                # An answer before any tool result: a small model guessing. Ask once for the tool.
                parsed.kind, parsed.problem = "invalid", NO_TOOL_YET
            if parsed.kind == "answer":
                self._update()
                return parsed.answer or last_result or ""
            if parsed.kind == "invalid":
                record["problem"] = parsed.problem
                self._update()
                if retried:
                    # Two invalid replies in a row: keep what the tools gave, or the raw text.
                    return last_result if last_result is not None else reply.text.strip()
                retried = True
                record["corrective_retry"] = True
                example_tool = by_name.get(parsed.tool or "") or tools[0]
                correction = corrective_message(
                    parsed.problem or "invalid reply",
                    example=call_skeleton(example_tool.name, example_tool.parameters),
                )
                # The correction joins the last request; the invalid reply is dropped (small
                # models repeat their own last turn).
                messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{correction}"}
                continue
            retried = False
            assert parsed.tool is not None  # a "tool" reply always names its tool
            call_key = json.dumps([parsed.tool, parsed.arguments], sort_keys=True, default=str)
            if call_key in done:
                # Small models repeat a call whose result they already have: that result answers.
                record["repeated_call"] = parsed.tool
                self._update()
                return done[call_key]
            outcome = self._run_tool(by_name[parsed.tool], parsed.arguments, record)
            called = True
            call_text = json.dumps({"tool": parsed.tool, "arguments": parsed.arguments}, ensure_ascii=False)
            if outcome.ok:
                last_result = result_text(outcome.result)
                done[call_key] = last_result
                feedback = f"Result of {parsed.tool}: {last_result}"
            else:
                feedback = f"Error from {parsed.tool}: {outcome.error}"
            messages += [
                {"role": "assistant", "content": call_text},
                {"role": "user", "content": f"{feedback}\nReply with the next tool call, or with the answer, as JSON."},
            ]

    def _solve_openai(self, step: dict[str, Any], tools: list[ToolSpec], user: str) -> str:
        by_name = {tool.name: tool for tool in tools}
        definitions = [tool_definition(name=t.name, description=t.description, parameters=t.parameters) for t in tools]
        system = self._system("Use the tools when they help; call them with exact arguments. Answer briefly.")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system}, *self.history, {"role": "user", "content": user}
        ]
        last_result: str | None = None
        while True:
            reply = self._model(messages, tools=definitions, purpose="step")
            record: dict[str, Any] = {"model_output": reply.text, "tool_calls": []}
            step["calls"].append(record)
            if not reply.tool_calls:
                self._update()
                return reply.text.strip() or last_result or ""
            ids = [call.id or f"call_{self.model_calls}_{i}" for i, call in enumerate(reply.tool_calls)]
            messages.append(
                {
                    "role": "assistant",
                    "content": reply.text or None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": (
                                    call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
                                ),
                            },
                        }
                        for call_id, call in zip(ids, reply.tool_calls, strict=True)
                    ],
                }
            )
            for call_id, call in zip(ids, reply.tool_calls, strict=True):
                content = self._openai_tool_result(call, by_name, record)
                if not content.startswith("Error"):
                    last_result = content
                messages.append({"role": "tool", "tool_call_id": call_id, "content": content})

    def _openai_tool_result(self, call: ToolCallRequest, by_name: dict[str, ToolSpec], record: dict[str, Any]) -> str:
        tool = by_name.get(call.name)
        if tool is None:
            problem = f"Error: unknown tool {call.name!r} (offered: {', '.join(sorted(by_name)) or 'none'})"
            record["tool_calls"].append({"tool": call.name, "arguments": call.arguments, "result": None,
                                         "error": problem, "duration_ms": 0})
            return problem
        arguments: Any = call.arguments
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = None
        repaired, problems = validate_arguments(tool.parameters, arguments)
        if problems:
            problem = "Error: invalid arguments: " + "; ".join(str(p) for p in problems[:3])
            record["tool_calls"].append({"tool": call.name, "arguments": call.arguments, "result": None,
                                         "error": problem, "duration_ms": 0})
            return problem
        outcome = self._run_tool(tool, repaired, record)
        return result_text(outcome.result) if outcome.ok else f"Error: {outcome.error}"

    # ------------------------------------------------------------------ the run

    def _compose(self, request: str, solved: list[tuple[str, str | None]]) -> str:
        lines = [f"Task: {request}"]
        if any(result is not None for _, result in solved):
            lines.append("Results of its steps:")
            lines += [f"{i}. {sub}: {res if res is not None else '(no tool for this step)'}"
                      for i, (sub, res) in enumerate(solved, start=1)]
            instruction = "Answer the task using the results of its steps. Be brief and give the final value."
        else:
            instruction = "Answer the task. Be brief."
        messages = [
            {"role": "system", "content": self._system(instruction)},
            *self.history,
            {"role": "user", "content": "\n".join(lines)},
        ]
        reply = self._model(messages, on_token=self._on_answer_token, purpose="answer")
        return reply.text.strip()

    def run(self, request: str, history: list[dict[str, Any]] | None = None) -> AgentResult:
        """Solve ``request``. ``history``: the conversation's earlier user and assistant messages (fitted to
        the caller's token budget), read by the answer's composition and by native tool-calling steps
        before the request (the JSON-mode steps keep their demonstrations next to the task)."""
        request = request.strip()
        self.request = request
        self.history = [dict(message) for message in history or []]
        solved: list[tuple[str, str | None]] = []
        finish = "stop"
        answer = ""
        try:
            if self.config.decompose:
                subtasks, decomposition = self._decompose(request, 0)
                self.steps.append({"type": "decompose", **decomposition})
                self._update()
            else:
                subtasks = [request]
            for index, subtask in enumerate(subtasks, start=1):
                step: dict[str, Any] = {
                    "type": "subtask", "index": index, "subtask": subtask, "searches": [], "decompositions": [],
                    "tools_found": [], "tools_offered": [], "calls": [], "result": None,
                }
                self.steps.append(step)
                hits = self.find_tools(subtask, step)
                step["tools_found"] = [{"name": h.tool.name, "score": round(float(h.score), 4)} for h in hits]
                tools = [hit.tool for hit in hits]
                step["tools_offered"] = [tool.name for tool in tools]
                for tool in tools:
                    if tool.name not in self.tools_offered:
                        self.tools_offered.append(tool.name)
                self._update()
                if not tools:
                    solved.append((subtask, None))
                    continue
                user = self._task_prompt(request, subtask, [(s, r) for s, r in solved if r is not None])
                solve = self._solve_openai if self.config.mode == "openai" else self._solve_json
                step["result"] = solve(step, tools, user)
                solved.append((subtask, step["result"]))
                self._update()
            if len(solved) == 1 and solved[0][1] is not None:
                answer = solved[0][1]
                if self._on_answer_token is not None and answer:
                    self._on_answer_token(answer)
            else:
                answer = self._compose(request, solved)
                self.steps.append({"type": "answer", "model_output": answer})
        except (StepLimitReached, BudgetReached) as exc:
            over_budget = isinstance(exc, BudgetReached)
            finish = "budget" if over_budget else "step_limit"
            results = [(s, r) for s, r in solved if r is not None]
            partial = "; ".join(f"{s}: {r}" for s, r in results)
            answer = (
                f"Stopped: the budget does not cover {getattr(exc, 'what', 'another step')} "
                f"(after {self.model_calls} model calls)."
                if over_budget
                else f"Stopped at the step limit ({self.config.step_limit} model calls)."
            )
            if partial:
                answer += f" Results so far: {partial}"
            self.steps.append({"type": "stopped", "reason": str(exc)})
            if self._on_answer_token is not None:
                self._on_answer_token(answer)
        self._update()
        return AgentResult(
            answer=answer,
            finish_reason=finish,
            steps=self.steps,
            tools_offered=list(self.tools_offered),
            tools_called=list(self.tools_called),
            model_calls=self.model_calls,
            tool_outcome=tool_outcome(self.steps),
        )


def run_agent(
    *,
    request: str,
    config: AgentConfig,
    model: ModelFn,
    search: SearchFn,
    execute: ExecuteFn,
    on_update: Callable[[list[dict[str, Any]]], None] | None = None,
    on_tool_done: ToolDoneFn | None = None,
    on_answer_token: Callable[[str], None] | None = None,
    tool_time: ToolTime | None = None,
) -> AgentResult:
    """Run the agent on one request (see the module docstring)."""
    loop = AgentLoop(
        config=config, model=model, search=search, execute=execute,
        on_update=on_update, on_tool_done=on_tool_done, on_answer_token=on_answer_token, tool_time=tool_time,
    )
    return loop.run(request)
