"""Where a corpus's index files live under a root folder, and a per-process cache of loaded indexes.

Layout: ``<root>/corpus-<id>/`` holding ``dense/`` (FAISS + JSON sidecar), ``bm25/`` (bm25s
files + JSON ids) and the ``.lock`` file that ``lock`` takes. Writers hold the lock exclusively
around load -> modify -> save; readers take it shared only while (re)loading. Loaded indexes
are cached per process, keyed by the corpus folder and the (mtime, inode) of both index files,
so searches do not reload unless a writer (in any process) replaced them.

No Django here: the caller passes the root (Parsimony: ``DATA_ROOT/indexes``). faiss and
bm25s load lazily, so importing this module stays cheap for the web process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DENSE_DIR = "dense"
BM25_DIR = "bm25"

Stamp = tuple[tuple[int, int] | None, tuple[int, int] | None]


@dataclass
class LoadedIndexes:
    stamp: Stamp
    vector_index: Any | None  # indexes.vector_index.VectorIndex
    bm25_index: Any | None  # indexes.bm25.BM25Index


_CACHE: dict[Path, LoadedIndexes] = {}
_CACHE_LOCK = threading.Lock()
_FAISS_CONFIGURED = False


def faiss_configure(threads: int) -> None:
    """``threads`` OpenMP threads per FAISS call, set once per process.

    FAISS parallelises even a single-query search over OpenMP threads; on a small machine the
    threads contend with torch and the web threads (see docs/operations.md). Searches are one
    query each, so Parsimony passes its torch thread count (1 by default).
    """
    global _FAISS_CONFIGURED
    if _FAISS_CONFIGURED:
        return
    import faiss

    faiss.omp_set_num_threads(max(1, int(threads)))
    _FAISS_CONFIGURED = True


def cache_clear() -> None:
    """Forget every loaded index of this process (tests switch roots between cases)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ino)


class CorpusIndexStore:
    """The FAISS and BM25 indexes of every corpus under ``root``, one folder per corpus id."""

    def __init__(self, root: str | os.PathLike[str], *, faiss_threads: int = 1) -> None:
        self.root = Path(root)
        self.faiss_threads = faiss_threads

    def folder(self, corpus_id: int) -> Path:
        return self.root / f"corpus-{int(corpus_id)}"

    def stamp(self, corpus_id: int) -> Stamp:
        """(mtime, inode) of the FAISS sidecar and the BM25 ids file; None for a missing one."""
        from indexes.bm25 import IDS_FILENAME
        from indexes.vector_index import SIDECAR_FILENAME

        folder = self.folder(corpus_id)
        return (_file_stamp(folder / DENSE_DIR / SIDECAR_FILENAME), _file_stamp(folder / BM25_DIR / IDS_FILENAME))

    @contextlib.contextmanager
    def lock(self, corpus_id: int, *, shared: bool = False) -> Iterator[None]:
        """The corpus folder's cross-process lock: writers exclusive, readers may share."""
        from indexes.vector_index import index_file_lock

        with index_file_lock(self.folder(corpus_id), shared=shared):
            yield

    def load(self, corpus_id: int) -> LoadedIndexes:
        """Load both indexes (either may be None when never written). Caller holds the lock."""
        faiss_configure(self.faiss_threads)
        from indexes.bm25 import BM25Index
        from indexes.vector_index import VectorIndex

        folder = self.folder(corpus_id)
        stamp = self.stamp(corpus_id)
        vector_index = VectorIndex.load(folder / DENSE_DIR) if stamp[0] is not None else None
        bm25_index = BM25Index.load(folder / BM25_DIR) if stamp[1] is not None else None
        return LoadedIndexes(stamp=stamp, vector_index=vector_index, bm25_index=bm25_index)

    def for_search(self, corpus_id: int) -> LoadedIndexes:
        """The cached indexes of a corpus, reloaded only when the files changed."""
        faiss_configure(self.faiss_threads)
        stamp = self.stamp(corpus_id)
        cached = _CACHE.get(self.folder(corpus_id))
        if cached is not None and cached.stamp == stamp:
            return cached
        if stamp == (None, None):
            return LoadedIndexes(stamp=stamp, vector_index=None, bm25_index=None)
        with self.lock(corpus_id, shared=True):
            loaded = self.load(corpus_id)
        self.remember(corpus_id, loaded)
        return loaded

    def remember(self, corpus_id: int, loaded: LoadedIndexes) -> None:
        """Cache indexes a writer just saved, so the next search does not reload them."""
        with _CACHE_LOCK:
            _CACHE[self.folder(corpus_id)] = loaded

    def forget(self, corpus_id: int) -> None:
        with _CACHE_LOCK:
            _CACHE.pop(self.folder(corpus_id), None)

    def vector_save(self, corpus_id: int, vector_index: Any) -> None:
        """Save FAISS atomically (the index writes a temp file and renames it). Caller holds the lock."""
        vector_index.save(self.folder(corpus_id) / DENSE_DIR)

    def bm25_save(self, corpus_id: int, bm25_index: Any) -> None:
        """Save BM25 into a fresh folder, then swap it in (bm25s writes several files). Caller holds the lock."""
        folder = self.folder(corpus_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bm25-", dir=folder))
        bm25_index.save(tmp)
        target = folder / BM25_DIR
        old = folder / f".bm25-old-{os.getpid()}-{threading.get_ident()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    def remove(self, corpus_id: int) -> None:
        """Delete the corpus's folder and forget its cached indexes."""
        self.forget(corpus_id)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.folder(corpus_id))
