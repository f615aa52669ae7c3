"""The retrieval pipeline fits its assembled prompt to the model's window: the lowest-ranked passages are
dropped whole until the prompt fits (workers.rag.pipeline.fit_passages)."""

from __future__ import annotations

from workers.prompting.base import Passage
from workers.rag.pipeline import fit_passages


def _passages(sizes: list[int]) -> list[Passage]:
    return [Passage(chunk_id=i, title=f"p{i}", text="w " * n) for i, n in enumerate(sizes)]


def _count(question_tokens: int):
    calls: list[int] = []

    def count(kept: list[Passage]) -> int:
        calls.append(len(kept))
        return question_tokens + sum(len(p.text.split()) for p in kept)

    count.calls = calls  # type: ignore[attr-defined]
    return count


def test_it_keeps_the_best_ranked_passages_that_fit_and_drops_the_rest_whole():
    passages = _passages([100, 200, 300, 400, 500])
    count = _count(50)
    kept = fit_passages(passages, count, 700)
    assert [p.chunk_id for p in kept] == [0, 1, 2]  # 50 + 600 fits, 50 + 1000 does not
    assert len(count.calls) <= 4  # bisected: the whole list, then log2(5) heads


def test_it_keeps_everything_that_fits_and_nothing_without_a_limit():
    passages = _passages([10, 10])
    assert fit_passages(passages, _count(5), 25) == passages
    assert fit_passages(passages, _count(10**6), None) == passages


def test_a_question_that_leaves_no_room_keeps_no_passage():
    assert fit_passages(_passages([10, 10]), _count(100), 50) == []
