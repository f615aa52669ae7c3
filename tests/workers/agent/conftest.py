"""Agent engine fixtures: a scripted fake model, a canned tool search, real built-in tools."""

from __future__ import annotations

from typing import Any

import pytest

from workers.agent.loop import ModelReply, ToolHit, ToolSpec
from workers.agent.tools import REGISTRY


def spec(name: str) -> ToolSpec:
    tool = REGISTRY[name]
    return ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters, key=name)


class ScriptedModel:
    """A plain callable that returns canned replies in order and remembers what it was asked."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, messages, *, tools=None, on_token=None, purpose="step", max_tokens=None, grammar=None
    ) -> ModelReply:
        self.calls.append(
            {"messages": [dict(m) for m in messages], "tools": tools, "purpose": purpose, "grammar": grammar}
        )
        if not self.replies:
            raise AssertionError(f"the script ran out of replies (call {len(self.calls)}, {purpose})")
        reply = self.replies.pop(0)
        if callable(reply):
            reply = reply(messages)
        if isinstance(reply, str):
            reply = ModelReply(text=reply)
        if on_token is not None and reply.text:
            on_token(reply.text)
        return reply

    def system_prompts(self, purpose: str = "step") -> list[str]:
        return [c["messages"][0]["content"] for c in self.calls if c["purpose"] == purpose]


class CannedSearch:
    """search(query, k): hits chosen by keywords in the query; everything else scores low."""

    def __init__(
        self, rules: dict[str, list[tuple[str, float]]], low: tuple[str, float] | None = ("add", 0.05)
    ) -> None:
        self.rules = rules
        self.low = low
        self.queries: list[str] = []

    def __call__(self, query: str, k: int) -> list[ToolHit]:
        self.queries.append(query)
        for keyword, hits in self.rules.items():
            if keyword in query.lower():
                return [ToolHit(tool=spec(name), score=score) for name, score in hits][:k]
        return [ToolHit(tool=spec(self.low[0]), score=self.low[1])] if self.low else []


def run_builtin(tool: ToolSpec, arguments: dict) -> Any:
    return REGISTRY[tool.name].function(**arguments)


@pytest.fixture
def scripted():
    return ScriptedModel


@pytest.fixture
def canned_search():
    return CannedSearch
