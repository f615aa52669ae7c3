"""The tool library index: one FAISS index of tool vectors per scope (a team, or "global").

Vectors only, keyed by the Tool row id (text and metadata stay in the database, so every
index is rebuildable). A tool's vector embeds ``"name: description"``; when the tool carries
example requests, the vector is the normalised blend ``w * description + (1 - w) * mean(examples)``
(Tool2Vec-style usage embedding; ``EXAMPLE_BLEND`` below). A search reads the team's index and
the global one and merges by score. Each folder is a ``VectorIndex`` (atomic save + sidecar);
writers hold ``index_file_lock``; loaded indexes are cached per process and reloaded when the
sidecar on disk changes (another process wrote it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.vector_index import SIDECAR_FILENAME, VectorIndex, index_file_lock

GLOBAL_SCOPE = "global"
# Weight of the description when a tool has examples (measured on MetaTool: see docs/agents.md).
DESCRIPTION_WEIGHT = 0.3

Embed = Callable[[Sequence[str]], np.ndarray]


def tool_text(name: str, description: str) -> str:
    """What the index embeds for a tool."""
    return f"{name}: {description.strip()}"


@dataclass(frozen=True)
class ToolDocument:
    tool_id: int
    name: str
    description: str
    examples: tuple[str, ...] = ()


def tool_vectors(documents: Sequence[ToolDocument], embed: Embed) -> np.ndarray:
    """(n, dim) normalised vectors for tools, examples blended in where there are any."""
    if not documents:
        return np.zeros((0, 0), dtype=np.float32)
    base = np.asarray(embed([tool_text(d.name, d.description) for d in documents]), dtype=np.float32)
    examples = [(i, e) for i, d in enumerate(documents) for e in d.examples if e.strip()]
    if examples:
        example_vectors = np.asarray(embed([e for _, e in examples]), dtype=np.float32)
        sums = np.zeros_like(base)
        counts = np.zeros(len(documents), dtype=np.float32)
        for (i, _), vector in zip(examples, example_vectors, strict=True):
            sums[i] += vector
            counts[i] += 1
        has = counts > 0
        blended = DESCRIPTION_WEIGHT * base[has] + (1 - DESCRIPTION_WEIGHT) * (sums[has] / counts[has, None])
        base[has] = blended
    norms = np.linalg.norm(base, axis=1, keepdims=True)
    return base / np.maximum(norms, 1e-12)


def _stamp(folder: Path) -> tuple[int, int] | None:
    try:
        stat = (folder / SIDECAR_FILENAME).stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class ToolIndexStore:
    """The tool indexes under ``root``: ``root/tools-<scope>/`` for each team id and "global"."""

    def __init__(self, root: str | os.PathLike[str], *, embed: Embed, dimension: int, model: str = "") -> None:
        self.root = Path(root)
        self.embed = embed
        self.dimension = dimension
        self.model = model
        self._cache: dict[Path, tuple[tuple[int, int] | None, VectorIndex]] = {}
        self._lock = threading.Lock()

    def folder(self, scope: int | str) -> Path:
        return self.root / f"tools-{scope}"

    # -- reads ---------------------------------------------------------------
    def _load(self, folder: Path) -> VectorIndex | None:
        stamp = _stamp(folder)
        if stamp is None:
            return None
        with self._lock:
            cached = self._cache.get(folder)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        index = VectorIndex.load(folder)
        with self._lock:
            self._cache[folder] = (stamp, index)
        return index

    def count(self, scope: int | str) -> int:
        index = self._load(self.folder(scope))
        return index.count if index is not None else 0

    def ids(self, scope: int | str) -> list[int]:
        index = self._load(self.folder(scope))
        return sorted(int(i) for i in index.ids()) if index is not None else []

    def search_vector(self, query: np.ndarray, *, scopes: Iterable[int | str], k: int) -> list[tuple[int, float]]:
        """(tool id, cosine score) pairs, best first, merged over the scopes."""
        merged: dict[int, float] = {}
        for scope in scopes:
            index = self._load(self.folder(scope))
            if index is None or index.count == 0:
                continue
            scores, ids = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), min(k, index.count))
            for score, tool_id in zip(scores[0], ids[0], strict=True):
                if tool_id >= 0:
                    merged[int(tool_id)] = max(float(score), merged.get(int(tool_id), -1.0))
        return sorted(merged.items(), key=lambda item: -item[1])[:k]

    def search(self, query: str, *, scopes: Iterable[int | str], k: int) -> list[tuple[int, float]]:
        vector = np.asarray(self.embed([query]), dtype=np.float32)[0]
        return self.search_vector(vector, scopes=scopes, k=k)

    # -- writes --------------------------------------------------------------
    def _new_index(self) -> VectorIndex:
        return VectorIndex(dimension=self.dimension, index_type="flat", model=self.model)

    def _forget(self, folder: Path) -> None:
        with self._lock:
            self._cache.pop(folder, None)

    def upsert(self, scope: int | str, documents: Sequence[ToolDocument]) -> None:
        """Add or replace tools' vectors (one load-modify-save under the folder lock)."""
        if not documents:
            return
        vectors = tool_vectors(documents, self.embed)
        folder = self.folder(scope)
        with index_file_lock(folder):
            index = VectorIndex.load(folder) if _stamp(folder) else self._new_index()
            index.add([d.tool_id for d in documents], vectors)
            index.save(folder)
        self._forget(folder)

    def remove(self, scope: int | str, tool_ids: Sequence[int]) -> int:
        folder = self.folder(scope)
        if not _stamp(folder):
            return 0
        with index_file_lock(folder):
            index = VectorIndex.load(folder)
            removed = index.remove(list(tool_ids))
            index.save(folder)
        self._forget(folder)
        return removed

    def rebuild(self, scope: int | str, documents: Sequence[ToolDocument]) -> int:
        """Replace the scope's index with exactly these tools; returns the count."""
        index = self._new_index()
        if documents:
            index.add([d.tool_id for d in documents], tool_vectors(documents, self.embed))
        folder = self.folder(scope)
        with index_file_lock(folder):
            index.save(folder)
        self._forget(folder)
        return index.count
