from __future__ import annotations

import pytest

from indexes.bm25 import BM25Index
from indexes.hybrid import SearchHit, fuse, hybrid_weights
from indexes.registry import get_retriever
from indexes.vector_index import VectorIndex


def test_it_carries_retriever_provenance():
    hits = fuse({"dense": [(1, 0.9), (2, 0.5)], "bm25": [(2, 7.0), (3, 1.0)]}, k=5)
    by_id = {h.chunk_id: h for h in hits}
    assert by_id[2].retrievers == {"dense": (2, 0.5), "bm25": (1, 7.0)}
    assert by_id[1].retrievers == {"dense": (1, 0.9)}
    assert by_id[3].retrievers == {"bm25": (2, 1.0)}


def test_it_ranks_agreement_first_with_equal_weights():
    hits = fuse({"dense": [(1, 0.9), (2, 0.8), (3, 0.1)], "bm25": [(2, 9.0), (4, 8.0), (1, 0.5)]}, k=2)
    assert hits[0].chunk_id == 2


def test_it_lets_the_heavier_retriever_win():
    lists = {"dense": [(1, 0.9), (2, 0.2)], "bm25": [(2, 9.0), (1, 1.0)]}
    assert fuse(lists, weights=hybrid_weights(0.9), k=1)[0].chunk_id == 1
    assert fuse(lists, weights=hybrid_weights(0.1), k=1)[0].chunk_id == 2


@pytest.mark.parametrize("method", ["zscore", "convex", "rrf"])
def test_it_supports_each_method(method):
    hits = fuse({"dense": [(1, 0.9), (2, 0.5)], "bm25": []}, method=method)
    assert [h.chunk_id for h in hits] == [1, 2]
    assert all(isinstance(h, SearchHit) for h in hits)


def test_it_computes_plain_rrf():
    hits = fuse({"a": [(1, 0.0), (2, 0.0)], "b": [(2, 0.0)]}, method="rrf", rrf_k=60)
    assert hits[0].chunk_id == 2
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61)


def test_it_rejects_unknown_methods_and_weights():
    with pytest.raises(ValueError, match="valid: zscore, convex, rrf"):
        fuse({}, method="borda")
    with pytest.raises(ValueError):
        hybrid_weights(1.5)
    assert fuse({"dense": [], "bm25": []}) == []


def _components(corpus, keyword_encoder):
    index = VectorIndex(dimension=keyword_encoder.dimension)
    ids = [chunk_id for chunk_id, _ in corpus]
    index.add(ids, [keyword_encoder.encode_query(text) for _, text in corpus])
    return {"embedder": keyword_encoder, "vector_index": index, "bm25_index": BM25Index.build(corpus)}


def test_it_builds_retrievers_by_name(corpus, keyword_encoder):
    components = _components(corpus, keyword_encoder)
    dense = get_retriever("dense", **components).search("capital of France", k=2)
    bm25 = get_retriever("bm25", **components).search("capital of France", k=2)
    hybrid = get_retriever("hybrid", **components).search("capital of France", k=2)
    assert dense[0].chunk_id == bm25[0].chunk_id == hybrid[0].chunk_id == 105
    assert set(dense[0].retrievers) == {"dense"} and set(bm25[0].retrievers) == {"bm25"}
    assert set(hybrid[0].retrievers) == {"dense", "bm25"}
    assert hybrid[0].retrievers["bm25"][0] == 1


def test_it_rejects_unknown_retrievers_listing_valid_ones(corpus, keyword_encoder):
    with pytest.raises(ValueError, match="valid: dense, bm25, hybrid"):
        get_retriever("splade", **_components(corpus, keyword_encoder))
    with pytest.raises(ValueError, match="needs bm25_index"):
        get_retriever("bm25")
