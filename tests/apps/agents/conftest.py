"""Agents fixtures: a temporary DATA_ROOT for the tool indexes, the built-in tools, scripted models."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget


@pytest.fixture(autouse=True)
def _data_root(settings, tmp_path):
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()


@pytest.fixture
def builtin_tools(db):
    """The global built-in tools (104), created and indexed the way `load_builtin_tools` does."""
    from apps.agents.services import builtin_tools_load

    return builtin_tools_load()


class Script:
    """Each model call gets the next canned reply (through the EchoTarget test double, so it is metered)."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.endpoints: list[str] = []

    def __call__(self, endpoint) -> EchoTarget:
        self.endpoints.append(endpoint.name)
        if not self.replies:
            raise AssertionError("the script ran out of replies")
        return EchoTarget(name=endpoint.name, reply=self.replies.pop(0))

    def say(self, *replies: str) -> Script:
        self.replies.extend(replies)
        return self


@pytest.fixture
def script(monkeypatch) -> Script:
    scripted = Script()
    monkeypatch.setattr(metering, "_target_override", scripted)
    return scripted


@pytest.fixture
def make_agent(db):
    from apps.agents.services import agent_save

    def make(team, name: str = "calc", **values):
        values.setdefault("similarity_threshold", 0.3)
        return agent_save(team=team, name=name, model_endpoint=values.pop("model", "smollm2-135m-instruct"), **values)

    return make


def area_script(*extra: Iterable[str]) -> list[str]:
    return [
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "The area is 40 square meters."}',
        *extra,
    ]


