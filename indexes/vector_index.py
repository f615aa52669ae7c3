"""FAISS vector indexes: vectors only, chosen by name, saved atomically.

FAISS holds vectors keyed by int64 ids (the database chunk ids); text and metadata
stay in the database, so an index can always be rebuilt from it. The index file is
written with faiss' own serialiser (never pickle) to a temp file in the same folder
and renamed over the old one, next to a JSON sidecar whose count is checked on load.

Concurrency: writes (add/remove/save) take an RLock; searches do not (FAISS CPU
searches are thread-safe against each other). Across processes, writers hold
`index_file_lock(directory)` (fcntl) around load-modify-save.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

INDEX_FILENAME = "vectors.faiss"
SIDECAR_FILENAME = "vectors.json"
LOCK_FILENAME = ".lock"
FORMAT_VERSION = 1


class IndexCorruptError(RuntimeError):
    """The saved index does not match its sidecar: rebuild it from the database."""


@dataclass(frozen=True)
class IndexSettings:
    """Knobs for the index types (a settings-like object; defaults suit a 2-core CPU box)."""

    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int | None = None  # None: about 4 * sqrt(n)
    ivf_nprobe: int = 16
    ivf_min_train_per_list: int = 39  # FAISS warns below 39 points per centroid
    auto_flat_max: int = 50_000  # exact search is fast enough up to here
    auto_hnsw_max: int = 1_000_000


def _flat(dimension: int, settings: IndexSettings, n_hint: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _hnsw(dimension: int, settings: IndexSettings, n_hint: int) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(dimension, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = settings.hnsw_ef_construction
    inner.hnsw.efSearch = settings.hnsw_ef_search
    return faiss.IndexIDMap2(inner)


def _ivf_nlist(settings: IndexSettings, n: int) -> int:
    if settings.ivf_nlist:
        return settings.ivf_nlist
    return max(1, int(4 * np.sqrt(max(n, 1))))


def _ivf(dimension: int, settings: IndexSettings, n_hint: int) -> faiss.Index:
    nlist = _ivf_nlist(settings, n_hint)
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(settings.ivf_nprobe, nlist)
    # IVF stores ids natively (an IDMap wrapper breaks its remove_ids); a hashtable
    # direct map adds reconstruct-by-id and keeps removal cheap.
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


INDEX_TYPES: dict[str, Callable[[int, IndexSettings, int], faiss.Index]] = {
    "flat": _flat,
    "hnsw": _hnsw,
    "ivf": _ivf,
}
VALID_INDEX_TYPES: tuple[str, ...] = (*INDEX_TYPES, "auto")


def resolve_index_type(name: str, *, count: int = 0, settings: IndexSettings | None = None) -> str:
    """Map a configured name to a concrete type; "auto" chooses by vector count."""
    settings = settings or IndexSettings()
    if name == "auto":
        if count <= settings.auto_flat_max:
            return "flat"
        if count <= settings.auto_hnsw_max:
            return "hnsw"
        return "ivf"
    if name not in INDEX_TYPES:
        raise ValueError(f"unknown index type {name!r} (valid: {', '.join(VALID_INDEX_TYPES)})")
    return name


def _as_vectors(vectors: np.ndarray, dimension: int) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dimension:
        raise ValueError(f"expected vectors of shape (n, {dimension}), got {tuple(np.shape(vectors))}")
    return arr


def _as_ids(ids: np.ndarray | list[int]) -> np.ndarray:
    arr = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    return arr


class VectorIndex:
    """A FAISS index of L2-normalised vectors under int64 ids, searched by inner product."""

    def __init__(
        self,
        *,
        dimension: int,
        index_type: str = "flat",
        model: str = "",
        settings: IndexSettings | None = None,
        expected_count: int = 0,
    ) -> None:
        self.dimension = int(dimension)
        self.model = model
        self.settings = settings or IndexSettings()
        self.requested_type = index_type
        concrete = resolve_index_type(index_type, count=expected_count, settings=self.settings)
        self.index_type = concrete
        self._write_lock = threading.RLock()
        # IVF needs training data; below its training size it stays exact (flat) and is
        # rebuilt as IVF once enough vectors are there (see _maybe_train_ivf).
        self._index = INDEX_TYPES["flat" if concrete == "ivf" else concrete](
            self.dimension, self.settings, expected_count
        )
        self._ivf_pending = concrete == "ivf"

    # -- reads -------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def effective_type(self) -> str:
        """What is really inside: "flat" while an IVF index is waiting for training data."""
        return "flat" if self._ivf_pending else self.index_type

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k); missing results have id -1 and score -inf."""
        q = _as_vectors(queries, self.dimension)
        if k < 1:
            raise ValueError("k must be at least 1")
        index = self._index  # a swap by a writer replaces the object; we keep a consistent one
        if index.ntotal == 0:
            return (
                np.full((len(q), k), -np.inf, dtype=np.float32),
                np.full((len(q), k), -1, dtype=np.int64),
            )
        scores, ids = index.search(q, k)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def ids(self) -> np.ndarray:
        """All ids currently stored (for consistency checks against the database)."""
        index = self._index
        if hasattr(index, "id_map"):
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(index)
        invlists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    # -- writes ------------------------------------------------------------
    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add vectors; ids already present are replaced (re-embedding a chunk is idempotent)."""
        id_arr = _as_ids(ids)
        vecs = _as_vectors(vectors, self.dimension)
        if len(id_arr) != len(vecs):
            raise ValueError(f"{len(id_arr)} ids for {len(vecs)} vectors")
        if len(np.unique(id_arr)) != len(id_arr):
            raise ValueError("duplicate ids in one add() call")
        if len(id_arr) == 0:
            return
        with self._write_lock:
            self._remove_locked(id_arr)
            self._index.add_with_ids(vecs, id_arr)
            self._maybe_train_ivf()

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        id_arr = _as_ids(ids)
        if len(id_arr) == 0:
            return 0
        with self._write_lock:
            return self._remove_locked(id_arr)

    def _remove_locked(self, id_arr: np.ndarray) -> int:
        if self.effective_type == "ivf":
            # The IVF hashtable direct map only accepts an IDSelectorArray.
            return int(self._index.remove_ids(faiss.IDSelectorArray(len(id_arr), faiss.swig_ptr(id_arr))))
        if self.effective_type != "hnsw":
            return int(self._index.remove_ids(faiss.IDSelectorBatch(id_arr)))
        # HNSW graphs cannot delete nodes: rebuild from the stored vectors without them.
        # O(n log n), fine for document deletes at the sizes "auto" picks HNSW for;
        # skipped entirely when none of the ids is present (the common add() case).
        all_ids = self.ids()
        drop = np.isin(all_ids, id_arr)
        removed = int(drop.sum())
        if removed == 0:
            return 0
        keep = all_ids[~drop]
        rebuilt = _hnsw(self.dimension, self.settings, len(keep))
        if len(keep):
            vectors = np.vstack([self._index.reconstruct(int(i)) for i in keep]).astype(np.float32)
            rebuilt.add_with_ids(vectors, keep)
        self._index = rebuilt
        return removed

    def _maybe_train_ivf(self) -> None:
        if not self._ivf_pending:
            return
        nlist = _ivf_nlist(self.settings, self.count)
        if self.count < nlist * self.settings.ivf_min_train_per_list:
            return
        ids = self.ids()
        vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)
        ivf = _ivf(self.dimension, self.settings, self.count)
        ivf.train(vectors)
        ivf.add_with_ids(vectors, ids)
        self._index = ivf  # atomic reference swap: concurrent searches see old or new
        self._ivf_pending = False

    # -- persistence -------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write index + sidecar atomically (temp files in the same folder, then os.replace).

        The index file is replaced first and the sidecar last: a crash in between
        leaves a count mismatch that load() reports, never a silently wrong index.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            sidecar = {
                "model": self.model,
                "dimension": self.dimension,
                "count": self.count,
                "index_type": self.index_type,
                "requested_type": self.requested_type,
                "effective_type": self.effective_type,
                "version": FORMAT_VERSION,
            }
            _atomic_write(folder / INDEX_FILENAME, faiss.serialize_index(self._index).tobytes())
            _atomic_write(folder / SIDECAR_FILENAME, json.dumps(sidecar, indent=2).encode())

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, settings: IndexSettings | None = None) -> VectorIndex:
        folder = Path(directory)
        sidecar_path, index_path = folder / SIDECAR_FILENAME, folder / INDEX_FILENAME
        if not sidecar_path.exists() or not index_path.exists():
            raise FileNotFoundError(f"no saved vector index in {folder}")
        try:
            meta = json.loads(sidecar_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexCorruptError(f"unreadable sidecar {sidecar_path}: {exc}") from exc
        if meta.get("version") != FORMAT_VERSION:
            raise IndexCorruptError(f"unsupported index format version {meta.get('version')!r}")
        try:
            raw = np.frombuffer(index_path.read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(raw)
        except RuntimeError as exc:
            raise IndexCorruptError(f"unreadable index file {index_path}: {exc}") from exc
        if int(index.ntotal) != int(meta.get("count", -1)):
            raise IndexCorruptError(
                f"index in {folder} holds {index.ntotal} vectors but its sidecar says {meta.get('count')}"
            )
        if int(index.d) != int(meta.get("dimension", -1)):
            raise IndexCorruptError(
                f"index in {folder} has dimension {index.d} but its sidecar says {meta.get('dimension')}"
            )
        self = cls(
            dimension=int(meta["dimension"]),
            index_type=meta.get("index_type", "flat"),
            model=meta.get("model", ""),
            settings=settings,
            expected_count=int(meta["count"]),
        )
        self.requested_type = meta.get("requested_type", self.index_type)
        self._index = index
        self._ivf_pending = meta.get("effective_type", self.index_type) != self.index_type
        if self.index_type == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.settings.hnsw_ef_search
        return self


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def index_file_lock(directory: str | os.PathLike[str], *, shared: bool = False) -> Iterator[None]:
    """Cross-process lock on an index folder (fcntl.flock): writers exclusive, readers may share.

    Hold it around load -> modify -> save so two workers do not lose each other's writes.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILENAME, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
