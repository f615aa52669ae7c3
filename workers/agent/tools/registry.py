"""The built-in tool packs by name: callable name -> function, description and JSON schema.

A ``python`` Tool row names its function here (``config = {"callable": "area_rectangle"}``);
``load_builtin_tools`` creates one global Tool row per entry. The description is the docstring's
first paragraph; the parameter descriptions come from its ``:param`` lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.agent.schema import docstring_parts, function_schema
from workers.agent.tools.calculator import CALCULATOR_TOOLS
from workers.agent.tools.datetime_tools import DATETIME_TOOLS
from workers.agent.tools.math_tools import MATH_TOOLS

PACKS: dict[str, list[Callable]] = {
    "math": MATH_TOOLS,
    "calculator": CALCULATOR_TOOLS,
    "datetime": DATETIME_TOOLS,
}

# The parameters of every `retrieval` tool: one query string (the corpus and k are its config).
RETRIEVAL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "What to look for, in a few words"}},
    "required": ["query"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class BuiltinTool:
    name: str
    pack: str
    function: Callable
    description: str
    parameters: dict[str, Any]


def _build() -> dict[str, BuiltinTool]:
    registry: dict[str, BuiltinTool] = {}
    for pack, functions in PACKS.items():
        for function in functions:
            name = function.__name__
            if name in registry:
                raise RuntimeError(f"built-in tool {name!r} is defined twice ({registry[name].pack}, {pack})")
            summary, _ = docstring_parts(function)
            registry[name] = BuiltinTool(
                name=name, pack=pack, function=function, description=summary, parameters=function_schema(function)
            )
    return registry


REGISTRY: dict[str, BuiltinTool] = _build()


def callable_names() -> list[str]:
    return sorted(REGISTRY)


def get_callable(name: str) -> Callable:
    """The registered function called ``name``; an unknown name raises KeyError naming the packs."""
    try:
        return REGISTRY[name].function
    except KeyError:
        raise KeyError(
            f"unknown built-in callable {name!r} (packs: {', '.join(sorted(PACKS))}; "
            f"{len(REGISTRY)} callables, e.g. {', '.join(callable_names()[:5])})"
        ) from None


def builtin_tools(packs: list[str] | None = None) -> list[BuiltinTool]:
    unknown = set(packs or []) - set(PACKS)
    if unknown:
        raise KeyError(f"unknown tool packs {sorted(unknown)} (valid: {', '.join(sorted(PACKS))})")
    return [tool for tool in REGISTRY.values() if packs is None or tool.pack in packs]


def retrieval_tool_description(corpus_name: str) -> str:
    return f"Search the '{corpus_name}' documents and return the passages most relevant to a query."
