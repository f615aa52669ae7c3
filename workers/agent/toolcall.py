"""The constrained JSON tool-call format for local models, and its robust parsing.

A local model replies with exactly one JSON object, either
    {"tool": "<name>", "arguments": {...}}     to call one of the offered tools, or
    {"answer": "<text>"}                       to answer.
Small models wrap it in prose or code fences, use single quotes, or trail a second object:
``first_json_object`` takes the first decodable ``{...}`` in the text (strict JSON first, then a
Python-literal reading for single quotes / True / None). ``parse_reply`` classifies the object
and checks the tool name and the arguments against the offered tools' schemas.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from workers.agent.schema import validate_arguments

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)

FORMAT_INSTRUCTIONS = (
    "Reply with ONE JSON object and nothing else.\n"
    'To call a tool: {"tool": "<tool name>", "arguments": {<argument name>: <value>, ...}}\n'
    'To give the final answer: {"answer": "<the answer>"}'
)


def _balanced_candidate(text: str, start: int) -> str | None:
    """The substring from ``start`` (a '{') to its matching '}', ignoring braces inside strings."""
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in ('"', "'"):
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (code fences and prose around it ignored), or None."""
    if not text:
        return None
    cleaned = _FENCE.sub("", text)
    for start in (i for i, ch in enumerate(cleaned) if ch == "{"):
        try:
            value, _ = _DECODER.raw_decode(cleaned, start)
        except json.JSONDecodeError:
            candidate = _balanced_candidate(cleaned, start)
            if candidate is None:
                continue
            try:
                value = ast.literal_eval(candidate)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(value, dict):
            return value
    return None


@dataclass
class ParsedReply:
    """One classified model reply. kind: "tool", "answer" or "invalid" (with ``problem``)."""

    kind: str
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None
    problem: str | None = None


def _answer_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, ensure_ascii=False)


def parse_reply(text: str, *, schemas: dict[str, dict[str, Any]]) -> ParsedReply:
    """Classify a reply against the offered tools (``schemas``: name -> JSON schema)."""
    obj = first_json_object(text)
    if obj is None:
        return ParsedReply(kind="invalid", problem="the reply contains no JSON object")
    if "tool" in obj or "name" in obj and "arguments" in obj:
        name = obj.get("tool", obj.get("name"))
        if not isinstance(name, str) or name not in schemas:
            offered = ", ".join(sorted(schemas)) or "none"
            return ParsedReply(kind="invalid", tool=str(name), problem=f"unknown tool {name!r} (offered: {offered})")
        arguments = obj.get("arguments", obj.get("args", {}))
        if isinstance(arguments, str):
            arguments = first_json_object(arguments) if arguments.strip() else {}
        if arguments is None:
            arguments = {}
        repaired, problems = validate_arguments(schemas[name], arguments)
        if problems:
            return ParsedReply(
                kind="invalid", tool=name, arguments=arguments if isinstance(arguments, dict) else {},
                problem=f"invalid arguments for {name}: " + "; ".join(str(p) for p in problems[:3]),
            )
        return ParsedReply(kind="tool", tool=name, arguments=repaired)
    if "answer" in obj:
        return ParsedReply(kind="answer", answer=_answer_text(obj["answer"]))
    return ParsedReply(kind="invalid", problem='the JSON object has neither "tool" nor "answer"')


JSON_SYSTEM = (
    "You solve tasks with tools. First call a tool with the numbers from the task; give the answer "
    "only after you have seen the tool's result.\n" + FORMAT_INSTRUCTIONS
)
# A worked exchange shown as chat turns before the real task: small models copy a demonstrated
# format far more reliably than a described one. Its tool is not among the offered ones.
DEMO_TOOL = json.dumps({
    "name": "get_weather", "description": "Get the weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
})
DEMO_TURNS = (
    {"role": "user", "content": f"Tools:\n{DEMO_TOOL}\nTask: Is it raining in Paris?"},
    {"role": "assistant", "content": '{"tool": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "user", "content": "Result of get_weather: light rain, 12 C\n"
                                "Reply with the next tool call, or with the answer, as JSON."},
    {"role": "assistant", "content": '{"answer": "Yes, there is light rain in Paris (12 C)."}'},
)
NO_TOOL_YET = "no tool was called yet: call one of the tools first, with the numbers from the task"


def call_skeleton(name: str, parameters: dict[str, Any]) -> str:
    """{"tool": name, "arguments": {"x": "...", ...}}: the shape of a call, without values."""
    properties = (parameters or {}).get("properties", {})
    return json.dumps({"tool": name, "arguments": {key: "..." for key in properties}})


def corrective_message(problem: str, *, example: str | None = None) -> str:
    """The retry instruction, appended to the last request (the invalid reply itself is not kept:
    small models copy their own last turn)."""
    hint = f"\nCall a tool now, for example {example}, with the values from the task in place of ..." if example else ""
    return f"Your previous reply was not valid: {problem}.{hint}\n{FORMAT_INSTRUCTIONS}"
