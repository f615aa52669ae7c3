"""Where a corpus's index files live, and a per-process cache of loaded indexes.

Layout: ``DATA_ROOT/indexes/corpus-<id>/`` holding ``dense/`` (FAISS + JSON sidecar) and
``bm25/`` (bm25s files + JSON ids), and the ``.lock`` file that ``index_file_lock`` takes.
Writers hold the lock exclusively around load -> modify -> save; readers take it shared
only while (re)loading. Loaded indexes are cached per process, keyed by corpus id and
the (mtime, inode) of both index files, so searches do not reload unless a writer
(in any process) replaced them.

Only imported inside functions by the rest of ``apps``: faiss and torch load lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

DENSE_DIR = "dense"
BM25_DIR = "bm25"


def corpus_index_dir(corpus_id: int) -> Path:
    return Path(settings.DATA_ROOT) / "indexes" / f"corpus-{int(corpus_id)}"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ino)


def index_stamp(corpus_id: int) -> tuple:
    from indexes.bm25 import IDS_FILENAME
    from indexes.vector_index import SIDECAR_FILENAME

    folder = corpus_index_dir(corpus_id)
    return (_stamp(folder / DENSE_DIR / SIDECAR_FILENAME), _stamp(folder / BM25_DIR / IDS_FILENAME))


@dataclass
class LoadedIndexes:
    stamp: tuple
    vector_index: Any | None  # indexes.vector_index.VectorIndex
    bm25_index: Any | None  # indexes.bm25.BM25Index


_CACHE: dict[int, LoadedIndexes] = {}
_CACHE_LOCK = threading.Lock()
_FAISS_CONFIGURED = False


def faiss_configure() -> None:
    """One OpenMP thread per FAISS call (PARSIMONY_TORCH_THREADS), once per process.

    FAISS parallelises even a single-query search over OpenMP threads; on a 2-core
    machine that made a flat 10k-vector search 100x slower (24 ms against 0.24 ms),
    as the threads contend with torch and the web threads. Searches are one query each.
    """
    global _FAISS_CONFIGURED
    if _FAISS_CONFIGURED:
        return
    import faiss

    faiss.omp_set_num_threads(max(1, int(settings.PARSIMONY_TORCH_THREADS)))
    _FAISS_CONFIGURED = True


def cache_forget(corpus_id: int) -> None:
    with _CACHE_LOCK:
        _CACHE.pop(int(corpus_id), None)


def cache_put(corpus_id: int, loaded: LoadedIndexes) -> None:
    with _CACHE_LOCK:
        _CACHE[int(corpus_id)] = loaded


def load_from_disk(corpus_id: int) -> LoadedIndexes:
    """Load both indexes (either may be None when never written). Caller holds the lock."""
    faiss_configure()
    from indexes.bm25 import BM25Index
    from indexes.vector_index import VectorIndex

    folder = corpus_index_dir(corpus_id)
    stamp = index_stamp(corpus_id)
    vector_index = VectorIndex.load(folder / DENSE_DIR) if stamp[0] is not None else None
    bm25_index = BM25Index.load(folder / BM25_DIR) if stamp[1] is not None else None
    return LoadedIndexes(stamp=stamp, vector_index=vector_index, bm25_index=bm25_index)


def indexes_for_search(corpus_id: int) -> LoadedIndexes:
    """The cached indexes of a corpus, reloaded only when the files changed."""
    from indexes.vector_index import index_file_lock

    corpus_id = int(corpus_id)
    faiss_configure()
    stamp = index_stamp(corpus_id)
    cached = _CACHE.get(corpus_id)
    if cached is not None and cached.stamp == stamp:
        return cached
    if stamp == (None, None):
        return LoadedIndexes(stamp=stamp, vector_index=None, bm25_index=None)
    with index_file_lock(corpus_index_dir(corpus_id), shared=True):
        loaded = load_from_disk(corpus_id)
    cache_put(corpus_id, loaded)
    return loaded


def bm25_save_atomic(bm25_index: Any, corpus_id: int) -> None:
    """Save BM25 into a fresh folder, then swap it in (bm25s writes several files)."""
    folder = corpus_index_dir(corpus_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bm25-", dir=folder))
    bm25_index.save(tmp)
    target = folder / BM25_DIR
    old = folder / f".bm25-old-{os.getpid()}-{threading.get_ident()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def index_dir_remove(corpus_id: int) -> None:
    cache_forget(corpus_id)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(corpus_index_dir(corpus_id))
