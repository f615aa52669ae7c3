"""Built-in tool packs (Django-free): math (100 Tulip tools), calculator, date and time."""

from workers.agent.tools.registry import (
    PACKS,
    REGISTRY,
    RETRIEVAL_PARAMETERS,
    BuiltinTool,
    builtin_tools,
    callable_names,
    get_callable,
)

__all__ = [
    "PACKS",
    "REGISTRY",
    "RETRIEVAL_PARAMETERS",
    "BuiltinTool",
    "builtin_tools",
    "callable_names",
    "get_callable",
]
