"""A small on-disk LRU cache for query-independent compression work (no Django).

Keys are built from (method, params, text hash, target, ...) by `cache_key`; values are bytes
(helpers for JSON and numpy arrays). One file per entry under ``<directory>/<2 hex>/<hash>``,
written atomically (temp file + rename) so concurrent workers never read half an entry. Recency
is the file's mtime, touched on every hit; when the directory grows past `max_bytes` the least
recently used entries are deleted until it is at 90% of the bound (so eviction is not paid
on every write).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(method: str, params: dict[str, Any], text: str, target: float | int | None = None, **extra: Any) -> str:
    """A stable key: sha256 of the canonical JSON of every input that changes the value."""
    payload = {"method": method, "params": params, "text": text_hash(text), "target": target, **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class CompressionCache:
    """Size-bounded LRU of bytes on disk. Thread-safe within a process, safe across processes."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        # Other processes write too, so this is an estimate that triggers a real scan.
        self._size = sum(size for _, _, size in self._entries())

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def _entries(self) -> list[tuple[float, Path, int]]:
        out = []
        for path in self.directory.glob("??/*"):
            if path.name.startswith("."):
                continue  # a temp file another writer has not renamed yet
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            out.append((st.st_mtime, path, st.st_size))
        return out

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
            return None
        try:
            os.utime(path)  # mark as recently used
        except FileNotFoundError:
            pass
        with self._lock:
            self.hits += 1
        return data

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return  # would evict everything and still not fit
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(value)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._size += len(value)
            over = self._size > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        with self._lock:
            entries = sorted(self._entries())  # oldest mtime first
            size = sum(s for _, _, s in entries)
            goal = int(self.max_bytes * 0.9)
            for _, path, entry_size in entries:
                if size <= goal:
                    break
                path.unlink(missing_ok=True)
                size -= entry_size
            self._size = size

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def size_bytes(self) -> int:
        return sum(s for _, _, s in self._entries())

    # ------------------------------------------------------------------ typed helpers

    def get_json(self, key: str) -> Any | None:
        data = self.get(key)
        return None if data is None else json.loads(data)

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, separators=(",", ":")).encode())

    def get_array(self, key: str) -> np.ndarray | None:
        data = self.get(key)
        # allow_pickle=False: a cache file is data, never code.
        return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)

    def put_array(self, key: str, value: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
        self.put(key, buffer.getvalue())
