"""The compression benchmark's pure helpers: equal-budget selection, passages rebuilt, money."""

import json
from decimal import Decimal

import pytest

from benchmarks.compression import (
    kept_passages,
    load_examples,
    load_prices,
    net_saving_per_1k,
    random_drop,
    select_within_budget,
    sentence_units,
    truncation_passages,
)
from workers.prompting.base import Passage  # noqa: E402

PASSAGES = [
    Passage(chunk_id=0, title="A", text="One two three. Four five."),
    Passage(chunk_id=1, title="B", text="Six seven eight nine. Ten."),
]


def words(text: str) -> int:
    return len(text.split())


def test_selection_walks_the_ranking_keeps_what_fits_and_restores_text_order():
    # sizes 3, 2, 4, 1; best first: unit 2 (4), then 0 (3 does not fit in 5 - 4), then 3 (1).
    assert select_within_budget([2, 0, 3, 1], [3, 2, 4, 1], 5) == [2, 3]
    assert select_within_budget([0, 1], [3, 2], 0) == []


def test_kept_sentences_go_back_into_their_passages_with_titles_and_empty_ones_drop():
    units = sentence_units(PASSAGES)
    assert [PASSAGES[i].text[a:b] for i, (a, b) in units] == ["One two three.", "Four five.", "Six seven eight nine.",
                                                               "Ten."]
    kept = kept_passages(PASSAGES, units, [1, 3])
    assert [(p.chunk_id, p.title, p.text) for p in kept] == [(0, "A", "Four five."), (1, "B", "Ten.")]
    assert kept_passages(PASSAGES, units, [2]) == [Passage(chunk_id=1, title="B", text="Six seven eight nine.")]


def test_random_drop_stays_within_the_budget_and_is_seeded():
    for seed in range(5):
        kept = random_drop(PASSAGES, 5, words, seed=seed)
        assert sum(words(p.text) for p in kept) <= 5
        assert kept == random_drop(PASSAGES, 5, words, seed=seed)


def test_truncated_text_is_split_back_into_its_passages():
    cut = truncation_passages(PASSAGES, "One two three. Four five.\n\nSix seven")
    assert [(p.title, p.text) for p in cut] == [("A", "One two three. Four five."), ("B", "Six seven")]
    assert [p.title for p in truncation_passages(PASSAGES, "One two")] == ["A"]


def test_net_saving_is_the_removed_tokens_at_the_input_price_less_the_compression_cost():
    # 600 tokens removed at $0.15 / 1M = $0.00009 a query; compression $0.00002 a query.
    assert net_saving_per_1k(600, Decimal("0.00002"), Decimal("0.00000015")) == pytest.approx(0.07)
    assert net_saving_per_1k(0, Decimal("0.001"), Decimal("0.0000025")) == pytest.approx(-1.0)


def test_prices_come_from_a_litellm_table(tmp_path):
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps({"m": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "mode": "chat"}})
    )
    assert load_prices(table, ["m"]) == {"m": {"input": Decimal("0.0000025"), "output": Decimal("0.00001")}}
    with pytest.raises(SystemExit, match="no per-token price for 'x'"):
        load_prices(table, ["x"])


class KeywordEmbedder:
    """Unit vectors over a tiny vocabulary: cosine = shared keywords (enough to rank three paragraphs)."""

    VOCAB = ("tower", "paris", "cheese", "milk", "river")

    def encode(self, texts):
        import numpy as np

        rows = np.array([[float(w in t.lower()) for w in self.VOCAB] for t in texts]) + 1e-3
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_hotpotqa_contexts_are_the_top_k_paragraphs_by_similarity_best_first(tmp_path):
    row = {"qid": "q1", "question": "Which tower is in Paris?", "answer": "Eiffel",
           "gold_pids": ["q1-2", "q1-0"],
           "paragraphs": [
               {"pid": "q1-0", "title": "Paris", "sentences": ["Paris is a city. ", "It has a river."]},
               {"pid": "q1-1", "title": "Cheese", "sentences": ["Cheese is made from milk."]},
               {"pid": "q1-2", "title": "Eiffel Tower", "sentences": ["The tower is in Paris."]},
           ]}
    (tmp_path / "questions_with_paragraphs.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "qid": "q2"}))
    kind, examples = load_examples(tmp_path, 1, top_k=2, embedder=KeywordEmbedder())
    assert kind == "hotpotqa" and [e["id"] for e in examples] == ["q1"]
    assert [p.title for p in examples[0]["passages"]] == ["Eiffel Tower", "Paris"]  # rank order, cheese cut
    assert [p.chunk_id for p in examples[0]["passages"]] == [0, 1]
    assert examples[0]["passages"][1].text == "Paris is a city. It has a river."
    assert examples[0]["gold_in_context"]
    _, given = load_examples(tmp_path, 1, contexts="given", offset=1)
    assert [e["id"] for e in given] == ["q2"]
    assert [p.title for p in given[0]["passages"]] == ["Paris", "Cheese", "Eiffel Tower"]
    _, one = load_examples(tmp_path, 1, top_k=1, embedder=KeywordEmbedder())
    assert not one[0]["gold_in_context"]  # a 2-hop question needs both supporting paragraphs
