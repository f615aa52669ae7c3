from __future__ import annotations

from indexes.bm25 import BM25Index


def test_it_ranks_keyword_matches_with_stemming(corpus):
    index = BM25Index.build(corpus)
    hits = index.search("runs in shoes", k=3)
    assert hits[0][0] == 104  # "running shoes": matched through the stemmer
    assert all(score > 0 for _, score in hits)


def test_it_returns_nothing_for_stopword_or_unknown_queries(corpus):
    index = BM25Index.build(corpus)
    assert index.search("the of and", k=3) == []
    assert index.search("zyzzyva", k=3) == []
    assert index.search("", k=3) == []


def test_it_handles_an_empty_index(tmp_path):
    index = BM25Index.build([])
    assert index.count == 0 and index.search("paris") == []
    index.save(tmp_path)
    assert BM25Index.load(tmp_path).search("paris") == []


def test_it_saves_and_loads(tmp_path, corpus):
    index = BM25Index.build(corpus)
    index.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert loaded.count == 5
    assert loaded.search("capital of France", k=2) == index.search("capital of France", k=2)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".npy", ".jsonl"}  # no pickle


def test_it_caps_k_at_the_corpus_size(corpus):
    assert len(BM25Index.build(corpus).search("paris france tower", k=50)) == 2
