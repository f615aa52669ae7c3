"""The compression benchmark's pure helpers: equal-budget selection, passages rebuilt, money."""

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.compression import (  # noqa: E402
    kept_passages,
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
    table.write_text(json.dumps({"m": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "mode": "chat"}}))
    assert load_prices(table, ["m"]) == {"m": {"input": Decimal("0.0000025"), "output": Decimal("0.00001")}}
    with pytest.raises(SystemExit, match="no per-token price for 'x'"):
        load_prices(table, ["x"])
