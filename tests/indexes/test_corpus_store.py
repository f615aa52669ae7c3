"""The corpus index store: a folder per corpus under a root, atomic saves, a cache that follows the files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from indexes import corpus_store
from indexes.bm25 import BM25Index
from indexes.corpus_store import CorpusIndexStore, LoadedIndexes
from indexes.vector_index import VectorIndex


@pytest.fixture(autouse=True)
def _fresh_cache():
    corpus_store.cache_clear()
    yield
    corpus_store.cache_clear()


def _write(store: CorpusIndexStore, corpus_id: int, vectors: np.ndarray, corpus: list[tuple[int, str]]) -> None:
    ids = [chunk_id for chunk_id, _ in corpus]
    vector_index = VectorIndex(dimension=vectors.shape[1], index_type="flat")
    vector_index.add(ids, vectors[: len(ids)])
    with store.lock(corpus_id):
        store.vector_save(corpus_id, vector_index)
        store.bm25_save(corpus_id, BM25Index.build(corpus))


def test_it_keeps_each_corpus_in_its_own_folder_under_the_root(tmp_path):
    store = CorpusIndexStore(tmp_path / "indexes")
    assert store.folder(7) == tmp_path / "indexes" / "corpus-7"


def test_it_loads_nothing_for_a_corpus_never_written(tmp_path):
    loaded = CorpusIndexStore(tmp_path).for_search(1)
    assert (loaded.stamp, loaded.vector_index, loaded.bm25_index) == ((None, None), None, None)


def test_it_reads_back_what_was_saved_and_caches_it_until_the_files_change(tmp_path, vectors, corpus):
    store = CorpusIndexStore(tmp_path)
    _write(store, 1, vectors, corpus)
    first = store.for_search(1)
    assert (first.vector_index.count, first.bm25_index.count) == (len(corpus), len(corpus))
    assert CorpusIndexStore(tmp_path).for_search(1) is first  # another store on the same root shares the cache
    _write(store, 1, vectors, corpus[:3])
    second = store.for_search(1)
    assert second is not first and second.bm25_index.count == 3


def test_two_roots_do_not_share_cached_indexes(tmp_path, vectors, corpus):
    one, two = CorpusIndexStore(tmp_path / "one"), CorpusIndexStore(tmp_path / "two")
    _write(one, 1, vectors, corpus)
    assert one.for_search(1).vector_index is not None
    assert two.for_search(1).vector_index is None


def test_a_writer_can_hand_its_saved_indexes_to_the_cache(tmp_path, vectors, corpus):
    store = CorpusIndexStore(tmp_path)
    _write(store, 1, vectors, corpus)
    mine = LoadedIndexes(stamp=store.stamp(1), vector_index=object(), bm25_index=object())
    store.remember(1, mine)
    assert store.for_search(1) is mine


def test_removing_a_corpus_deletes_its_folder_and_cache(tmp_path, vectors, corpus):
    store = CorpusIndexStore(tmp_path)
    _write(store, 1, vectors, corpus)
    store.for_search(1)
    store.remove(1)
    assert not store.folder(1).exists()
    assert store.for_search(1).vector_index is None
    store.remove(1)  # removing twice is fine


def test_it_imports_neither_django_nor_faiss():
    code = "import sys, indexes.corpus_store; sys.exit(any(m in sys.modules for m in ('django', 'faiss', 'apps')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
