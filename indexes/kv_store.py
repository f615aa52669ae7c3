"""A disk store for transformer KV caches of prompt pieces (no Django here).

Superposition prompting and fixed contexts compute the KV cache of a prompt piece once; later
queries load it instead of running the model over it again. This module only stores and finds
those tensors (safetensors files, atomic writes, an SQLite LRU sidecar, a size budget); what they
mean belongs to the caller. Everything here is a cache: deleting the directory is always safe.
The layout and the guarantees are spelled out on `KVStore`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "parsimony-kv/1"
ARTIFACT_FORMAT = "parsimony-kv-artifact/1"
INDEX_FILENAME = "index.sqlite3"
LOCK_FILENAME = ".lock"
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class KVKey:
    """What a cached KV depends on: the model, the preamble it was computed after, the piece itself.

    `chunk_id` None means the preamble's own KV. `text_hash` is a hash of the piece's exact text
    (so an edited chunk never reuses a stale cache); `preamble_hash` covers the preamble's token
    ids and anything else the caller wants to invalidate on (prompt format version, dtype).
    """

    model: str
    preamble_hash: str
    chunk_id: int | str | None = None
    text_hash: str = ""

    def relative_path(self) -> Path:
        folder = Path(_slug(self.model)) / _slug(self.preamble_hash)[:32]
        if self.chunk_id is None:
            return folder / "preamble.safetensors"
        return folder / f"chunk-{_slug(str(self.chunk_id))}-{_slug(self.text_hash)[:16]}.safetensors"


@dataclass
class KVEntry:
    """A KV cache slice: per layer keys and values (KV heads, T, head dim), the T token ids, metadata."""

    keys: list[Any]
    values: list[Any]
    token_ids: list[int]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def text_hash(*parts: str) -> str:
    """A stable hex digest of some strings (length-prefixed, so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "_"


class KVStore:
    """KV cache entries on disk with an LRU size budget. Safe across threads and processes.

    Superposition prompting computes the KV cache of the preamble P, and of every document d_i
    given P, once; later queries load them instead of running the model over them again. This
    module only stores and finds those tensors; what they mean belongs to the caller
    (`workers.prompting.superposition`).

    Layout under the directory the caller passes (e.g. DATA_ROOT/kv-cache)::

        <root>/index.sqlite3                       sizes and last-access times (the LRU sidecar)
        <root>/.lock                               held by writers (fcntl), across processes
        <root>/<model>/<preamble hash>/preamble.safetensors
        <root>/<model>/<preamble hash>/chunk-<chunk id>-<text hash>.safetensors
        <root>/<model>/<preamble hash>/preamble.<name>.safetensors
                                                   an artifact beside an entry (put_artifact):
                                                   key centroids, key ANN indexes, sampled queries

    An entry is one safetensors file: per layer ``k.<i>`` and ``v.<i>`` shaped (KV heads, T, head
    dim), ``token_ids`` (T,), and string metadata (format, layer count, anything the caller adds).
    Files are written to a temp file in the same folder and renamed, so a reader never sees half a
    file; a file that still fails to load (disk trouble, a foreign file) is deleted and reported as
    a miss, and the caller recomputes it. Everything here is a cache: deleting the directory is
    always safe (``clear()``), the next queries rebuild it.

    Size budget: after every write, least-recently-used entries are deleted until the total is
    within ``max_bytes``. Reads update the access time. The sidecar is SQLite (one row per file),
    so concurrent readers and writers in several worker processes stay consistent; writers also
    take the directory's file lock so that write-then-evict runs one process at a time.
    """

    def __init__(self, root: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries ("
                " path TEXT PRIMARY KEY, bytes INTEGER NOT NULL, last_access REAL NOT NULL)"
            )

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / INDEX_FILENAME, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        with open(self.root / LOCK_FILENAME, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def path_for(self, key: KVKey) -> Path:
        return self.root / key.relative_path()

    # ------------------------------------------------------------------ reads

    def get(self, key: KVKey) -> KVEntry | None:
        """The entry for `key`, or None (absent, or unreadable: then it is deleted for a rebuild)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            entry = _read(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a miss to recompute
            log.warning("KV cache file %s is unreadable (%s); deleting it for a rebuild", path, exc)
            self._forget(path)
            return None
        rel = str(path.relative_to(self.root))
        with self._db() as db:
            # An orphan file (written, then the process died before indexing it) is adopted here.
            db.execute(
                "INSERT INTO entries (path, bytes, last_access) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET last_access = excluded.last_access",
                (rel, path.stat().st_size, time.time()),
            )
        return entry

    def __contains__(self, key: KVKey) -> bool:
        return self.path_for(key).is_file()

    def total_bytes(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0])

    def entries(self) -> list[tuple[str, int, float]]:
        """(relative path, bytes, last access) for every indexed entry, least recently used first."""
        with self._db() as db:
            rows = db.execute("SELECT path, bytes, last_access FROM entries ORDER BY last_access, path")
            return [tuple(row) for row in rows]

    # ------------------------------------------------------------------ writes

    def put(self, key: KVKey, entry: KVEntry) -> bool:
        """Write `entry` atomically, then evict LRU entries over budget. False if it was not kept.

        An entry larger than the whole budget is not written at all.
        """

        if len(entry.keys) != len(entry.values) or not entry.keys:
            raise ValueError("a KV entry needs the same non-zero number of key and value layers")
        tensors: dict[str, Any] = {}
        for i, (k, v) in enumerate(zip(entry.keys, entry.values, strict=True)):
            if k.dim() != 3 or k.shape != v.shape or k.shape[1] != entry.n_tokens:
                raise ValueError(f"layer {i}: keys/values must be (KV heads, {entry.n_tokens}, head dim), got "
                                 f"{tuple(k.shape)} / {tuple(v.shape)}")
            tensors[f"k.{i}"] = k.detach().contiguous()
            tensors[f"v.{i}"] = v.detach().contiguous()
        import torch

        tensors["token_ids"] = torch.tensor(entry.token_ids, dtype=torch.int64)
        meta = {**entry.meta, "format": FORMAT, "n_layers": str(len(entry.keys)), "n_tokens": str(entry.n_tokens)}
        if entry.nbytes > self.max_bytes:
            return False
        return self._write(self.path_for(key), tensors, meta)

    # ------------------------------------------------------------------ artifacts beside an entry
    # Added for the sparse attention backends (key centroids, key ANN indexes, sampled queries):
    # named safetensors files in the entry's folder, written atomically and counted in the same
    # LRU budget. Each is a cache like the entry itself: a miss (absent, evicted, unreadable) means
    # "rebuild it".

    def artifact_path(self, key: KVKey, name: str) -> Path:
        base = self.path_for(key)
        return base.with_name(f"{base.stem}.{_slug(name)}.safetensors")

    def put_artifact(self, key: KVKey, name: str, tensors: dict[str, Any], meta: dict[str, str] | None = None) -> bool:
        """Write named tensors (any shapes) beside `key`'s entry, atomically; LRU-evict. False if not kept."""

        if not tensors:
            raise ValueError("an artifact needs at least one tensor")
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            return False
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        return self._write(self.artifact_path(key, name), tensors,
                           {**(meta or {}), "format": ARTIFACT_FORMAT, "name": name})

    def _write(self, path: Path, tensors: dict[str, Any], meta: dict[str, str]) -> bool:
        """Save ``tensors`` at ``path`` atomically (temp file + rename) under the writer lock, count the file in
        the LRU budget and evict past it. False when the file itself was evicted (not kept)."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp_name, metadata=meta)
            os.chmod(tmp_name, 0o644)
            with self._writer_lock():
                os.replace(tmp_name, path)
                rel = str(path.relative_to(self.root))
                with self._db() as db:
                    db.execute(
                        "INSERT INTO entries (path, bytes, last_access) VALUES (?, ?, ?) "
                        "ON CONFLICT(path) DO UPDATE SET bytes = excluded.bytes, last_access = excluded.last_access",
                        (rel, path.stat().st_size, time.time()),
                    )
                    evicted = self._evict(db)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        for rel_path in evicted:
            with contextlib.suppress(FileNotFoundError):
                (self.root / rel_path).unlink()
        return str(path.relative_to(self.root)) not in evicted

    def get_artifact(self, key: KVKey, name: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        """(tensors, metadata) of a named artifact, or None (absent, or unreadable: then deleted)."""
        from safetensors import safe_open

        path = self.artifact_path(key, name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                if meta.get("format") != ARTIFACT_FORMAT or meta.get("name") != name:
                    raise ValueError(f"not a {ARTIFACT_FORMAT} artifact named {name!r}")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a miss to rebuild
            log.warning("KV artifact %s is unreadable (%s); deleting it for a rebuild", path, exc)
            self._forget(path)
            return None
        with self._db() as db:
            db.execute(
                "INSERT INTO entries (path, bytes, last_access) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET last_access = excluded.last_access",
                (str(path.relative_to(self.root)), path.stat().st_size, time.time()),
            )
        return tensors, meta

    def delete_artifact(self, key: KVKey, name: str) -> None:
        self._forget(self.artifact_path(key, name))

    def _evict(self, db: sqlite3.Connection) -> list[str]:
        total = int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0])
        evicted: list[str] = []
        if total <= self.max_bytes:
            return evicted
        for rel, size in db.execute("SELECT path, bytes FROM entries ORDER BY last_access, path").fetchall():
            if total <= self.max_bytes:
                break
            db.execute("DELETE FROM entries WHERE path = ?", (rel,))
            evicted.append(rel)
            total -= int(size)
        return evicted

    def delete(self, key: KVKey) -> None:
        self._forget(self.path_for(key))

    def _forget(self, path: Path) -> None:
        with self._writer_lock():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with self._db() as db:
                db.execute("DELETE FROM entries WHERE path = ?", (str(path.relative_to(self.root)),))

    def clear(self) -> None:
        """Delete every entry (the store is a cache: the next queries rebuild what they need)."""
        with self._writer_lock():
            for child in self.root.iterdir():
                if child.name in (LOCK_FILENAME,) or child.name.startswith(INDEX_FILENAME):
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        child.unlink()
            with self._db() as db:
                db.execute("DELETE FROM entries")


def _read(path: Path) -> KVEntry:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        n_layers, n_tokens = int(meta["n_layers"]), int(meta["n_tokens"])
        keys = [fh.get_tensor(f"k.{i}") for i in range(n_layers)]
        values = [fh.get_tensor(f"v.{i}") for i in range(n_layers)]
        token_ids = fh.get_tensor("token_ids").tolist()
    if len(token_ids) != n_tokens or any(t.dim() != 3 or t.shape[1] != n_tokens for t in (*keys, *values)):
        raise ValueError("tensor shapes do not match the recorded token count")
    return KVEntry(keys=keys, values=values, token_ids=token_ids, meta=meta)


__all__ = ["ARTIFACT_FORMAT", "DEFAULT_MAX_BYTES", "KVEntry", "KVKey", "KVStore", "text_hash"]
