"""The library search with the real MiniLM over the 104 built-in tools."""

import pytest

from indexes.tool_index import ToolDocument, ToolIndexStore
from workers.agent.tools import builtin_tools


@pytest.fixture(scope="module")
def library(embedder, tmp_path_factory):
    tools = builtin_tools()
    store = ToolIndexStore(tmp_path_factory.mktemp("tools"), embed=embedder.encode, dimension=embedder.dimension)
    store.upsert("global", [ToolDocument(i, t.name, t.description) for i, t in enumerate(tools)])
    return store, [t.name for t in tools]


@pytest.mark.parametrize(
    ("need", "tool"),
    [
        ("I need the area of a rectangle that is 8 meters long and 5 meters wide", "area_rectangle"),
        ("How much water fits in a ball with a radius of 6 meters?", "volume_sphere"),
        ("Convert 30 degrees Celsius to Fahrenheit", "convert_celsius_to_fahrenheit"),
        ("What is the greatest common divisor of 48 and 18?", "gcd"),
        ("How many days are there between 2026-01-01 and 2026-03-01?", "date_difference"),
        ("What time is it now in Tokyo?", "current_datetime"),
    ],
)
def test_it_finds_the_math_tool_for_a_described_need(library, need, tool):
    store, names = library
    hits = store.search(need, scopes=["global"], k=3)
    assert tool in [names[tool_id] for tool_id, _ in hits], [(names[i], round(s, 3)) for i, s in hits]
    assert 0 < hits[0][1] <= 1.0001
