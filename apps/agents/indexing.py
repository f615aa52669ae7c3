"""The Django side of the tool index: where it lives, how it embeds, keeping it in step with Tool rows.

Indexes live under DATA_ROOT/indexes/tools-<team id>/ and DATA_ROOT/indexes/tools-global/
(engine: ``indexes.tool_index``). Only enabled tools are indexed; searches still re-check rows
in the database, so a vector left behind by a rolled-back change is never offered.
torch and faiss load on first use, never at import.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from apps.agents.models import Tool
    from indexes.tool_index import ToolDocument, ToolIndexStore

TOOL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_EMBED_CACHE_SIZE = 4096

_store: ToolIndexStore | None = None
_store_lock = threading.Lock()
_vectors: OrderedDict[str, object] = OrderedDict()
_vectors_lock = threading.Lock()
# What the texts embedded inside ``embedding_meter()`` cost: seconds, texts and tokens (cache hits are free).
_meter: ContextVar[dict | None] = ContextVar("tool_embedding_meter", default=None)


@contextmanager
def embedding_meter() -> Iterator[dict]:
    """Count the embedding work done inside the block: {"seconds", "texts", "tokens"} (for the ledger row)."""
    meter = {"seconds": 0.0, "texts": 0, "tokens": 0}
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def _encode(texts: list[str]) -> object:
    from apps.corpora.services.embedding import embed_batch
    from apps.costs.tokens import embedding_tokens

    embedder = _embedder()
    # The model's device-seconds (not a wait for its lock), in the corpora's batches for its device.
    vectors, seconds = embedder.encode_timed(texts, batch_size=embed_batch(embedder.device))
    meter = _meter.get()
    if meter is not None:
        meter["seconds"] += seconds
        meter["texts"] += len(texts)
        # Counted with a tokenizer of its own: the embedder's is reconfigured by every encode.
        meter["tokens"] += embedding_tokens(TOOL_EMBEDDING_MODEL, texts)
    return vectors


def _embedder():
    from workers.runtime.embedders import get_embedder

    return get_embedder(TOOL_EMBEDDING_MODEL, threads=settings.PARSIMONY_TORCH_THREADS)


def embed_texts(texts) -> object:
    """(n, 384) normalised vectors; repeated texts (tool descriptions) come from a small LRU cache."""
    import numpy as np

    texts = list(texts)
    missing = [t for t in dict.fromkeys(texts) if t not in _vectors]
    if missing:
        fresh = _encode(missing)
        with _vectors_lock:
            for text, vector in zip(missing, fresh, strict=True):
                _vectors[text] = vector
                _vectors.move_to_end(text)
            while len(_vectors) > _EMBED_CACHE_SIZE:
                _vectors.popitem(last=False)
    with _vectors_lock:
        rows = [_vectors.get(t) for t in texts]
    if any(row is None for row in rows):  # evicted meanwhile: encode those again
        return _encode(texts)
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 384), dtype=np.float32)


def embed_query(text: str) -> tuple[object, float]:
    """(vector, seconds the model spent embedding it): queries are not cached (they are billed)."""
    vectors, seconds = _embedder().encode_timed([text], batch_size=1)
    return vectors[0], seconds


def query_tokens(text: str) -> int:
    """Tokens of a query as the tool embedder reads it (special tokens included)."""
    from apps.costs.tokens import embedding_tokens

    return embedding_tokens(TOOL_EMBEDDING_MODEL, [text])


def index_root() -> Path:
    return Path(settings.DATA_ROOT) / "indexes"


def tool_store() -> ToolIndexStore:
    """The process's store for the current DATA_ROOT (tests change it per test)."""
    global _store
    from indexes.tool_index import ToolIndexStore

    root = index_root()
    with _store_lock:
        if _store is None or _store.root != root:
            _store = ToolIndexStore(root, embed=embed_texts, dimension=384, model=TOOL_EMBEDDING_MODEL)
        return _store


def scope_of(tool: Tool) -> int | str:
    from indexes.tool_index import GLOBAL_SCOPE

    return GLOBAL_SCOPE if tool.team_id is None else tool.team_id


def team_scopes(team) -> list[int | str]:
    from indexes.tool_index import GLOBAL_SCOPE

    return [team.pk, GLOBAL_SCOPE] if team is not None else [GLOBAL_SCOPE]


def document_of(tool: Tool) -> ToolDocument:
    from indexes.tool_index import ToolDocument

    examples = tuple(str(e) for e in (tool.examples or []) if str(e).strip())
    return ToolDocument(tool_id=tool.pk, name=tool.name, description=tool.description, examples=examples)


def tool_index_sync(tool: Tool) -> None:
    """Bring one tool's vector in line with its row: (re)embed it if enabled, drop it if not."""
    store = tool_store()
    if tool.enabled:
        store.upsert(scope_of(tool), [document_of(tool)])
    else:
        store.remove(scope_of(tool), [tool.pk])


def tool_index_drop(*, scope: int | str, tool_id: int) -> None:
    tool_store().remove(scope, [tool_id])
