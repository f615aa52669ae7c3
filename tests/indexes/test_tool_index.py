"""The tool index store: scopes, upserts, removal, rebuilds, merged search (a bag-of-words embedder)."""

import numpy as np
import pytest

from indexes.tool_index import ToolDocument, ToolIndexStore, tool_text, tool_vectors

VOCABULARY = ["area", "rectangle", "circle", "volume", "sphere", "weather", "city", "date", "add", "days"]


def bag_of_words(texts):
    rows = []
    for text in texts:
        words = text.lower().replace(":", " ").replace("_", " ").split()
        v = np.array([float(words.count(w)) for w in VOCABULARY], dtype=np.float32) + 1e-3
        rows.append(v / np.linalg.norm(v))
    return np.vstack(rows)


@pytest.fixture
def store(tmp_path):
    return ToolIndexStore(tmp_path, embed=bag_of_words, dimension=len(VOCABULARY))


RECTANGLE = ToolDocument(1, "area_rectangle", "Calculate the area of a rectangle.")
SPHERE = ToolDocument(2, "volume_sphere", "Calculate the volume of a sphere.")
WEATHER = ToolDocument(10, "weather", "The weather in a city.")


def test_it_searches_the_team_index_and_the_global_one_together(store):
    store.upsert("global", [RECTANGLE, SPHERE])
    store.upsert(7, [WEATHER])
    assert store.search("weather in my city", scopes=[7, "global"], k=1)[0][0] == 10
    assert store.search("weather in my city", scopes=[8, "global"], k=3)[0][0] != 10  # team 8 cannot see it
    top = store.search("area of a rectangle", scopes=[7, "global"], k=2)
    assert top[0][0] == 1 and top[0][1] > top[1][1]
    assert (store.folder(7) / "vectors.faiss").exists()


def test_an_upsert_replaces_a_tools_vector_and_remove_drops_it(store):
    store.upsert("global", [RECTANGLE, SPHERE])
    store.upsert("global", [ToolDocument(1, "add_days", "Add days to a date.")])
    assert store.count("global") == 2
    assert store.search("add days to a date", scopes=["global"], k=1)[0][0] == 1
    assert store.remove("global", [1]) == 1
    assert store.ids("global") == [2]


def test_a_rebuild_holds_exactly_the_given_tools(store):
    store.upsert("global", [RECTANGLE, SPHERE])
    assert store.rebuild("global", [SPHERE]) == 1
    assert store.ids("global") == [2]
    assert store.rebuild("global", []) == 0
    assert store.search("sphere", scopes=["global"], k=3) == []


def test_a_second_store_sees_writes_of_the_first(tmp_path):
    writer = ToolIndexStore(tmp_path, embed=bag_of_words, dimension=len(VOCABULARY))
    reader = ToolIndexStore(tmp_path, embed=bag_of_words, dimension=len(VOCABULARY))
    writer.upsert("global", [RECTANGLE])
    assert reader.ids("global") == [1]
    writer.upsert("global", [SPHERE])
    assert reader.ids("global") == [1, 2]


def test_examples_pull_a_tools_vector_towards_its_usage():
    plain = tool_vectors([WEATHER], bag_of_words)[0]
    with_examples = tool_vectors(
        [ToolDocument(10, "weather", "The weather in a city.", ("add days", "add days"))], bag_of_words
    )[0]
    query = bag_of_words(["add days"])[0]
    assert float(with_examples @ query) > float(plain @ query)
    assert np.linalg.norm(with_examples) == pytest.approx(1.0)
    assert tool_text("add", " Add two numbers. ") == "add: Add two numbers."
