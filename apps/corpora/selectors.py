"""Reads for corpora, and the search API the rest of Parsimony calls: ``chunk_search``.

Only chunks of ready documents are returned: a document whose ingestion is in progress
(or crashed midway) may already have vectors in the index, but it is never visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.core.errors import ValidationFailed
from apps.core.scoping import id_from_ref, team_object_or_404, team_scoped
from apps.corpora.models import Chunk, Corpus, Document, DocumentStatus
from indexes.corpus_store import CorpusIndexStore

FILTER_SLACK = 10  # extra candidates fetched so that filtering out non-ready chunks still leaves k


@dataclass
class ChunkHit:
    chunk: Chunk  # with .document selected
    score: float
    # retriever name -> (1-based rank, raw score) in that retriever's list
    retrievers: dict[str, tuple[int, float]] = field(default_factory=dict)


def corpus_list(*, team) -> QuerySet[Corpus]:
    ready_chunks = (
        Chunk.objects.filter(document__corpus=OuterRef("pk"), document__status=DocumentStatus.READY)
        .order_by()
        .values("document__corpus")
        .annotate(n=Count("id"))
        .values("n")
    )
    return (
        team_scoped(Corpus, team)
        .annotate(n_documents=Count("documents", distinct=True), n_ready_chunks=Coalesce(Subquery(ready_chunks), 0))
        .order_by("name", "id")
    )


def corpus_get(*, team, corpus_id: int) -> Corpus:
    """The team's corpus, or Http404 (another team's corpus looks exactly like a missing one)."""
    return team_object_or_404(Corpus.objects.select_related("team"), team, pk=corpus_id)


def corpus_get_by_name_or_id(*, team, ref: str) -> Corpus:
    pk = id_from_ref(ref)
    if pk is not None:
        return corpus_get(team=team, corpus_id=pk)
    return team_object_or_404(Corpus.objects.select_related("team"), team, name=ref)


def document_list(*, corpus: Corpus, status: str | None = None) -> QuerySet[Document]:
    queryset = corpus.documents.annotate(n_chunks=Count("chunks"))
    if status is not None:
        if status not in DocumentStatus.values:
            raise ValidationFailed(f"unknown document status {status!r} (valid: {', '.join(DocumentStatus.values)})")
        queryset = queryset.filter(status=status)
    return queryset.order_by("-created_at", "-id")


def chunk_count(*, corpus: Corpus) -> int:
    return Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY).count()


def corpus_index_store() -> CorpusIndexStore:
    """The corpus index files under ``DATA_ROOT/indexes`` (read per call: tests change DATA_ROOT)."""
    return CorpusIndexStore(Path(settings.DATA_ROOT) / "indexes", faiss_threads=settings.PARSIMONY_TORCH_THREADS)


# --------------------------------------------------------------------------- search


def retriever_names() -> tuple[str, ...]:
    from indexes.registry import RETRIEVERS

    return tuple(RETRIEVERS)


def _check_retriever(name: str) -> None:
    valid = retriever_names()
    if name not in valid:
        raise ValidationFailed(
            f"unknown retriever {name!r} (valid: {', '.join(valid)})", detail={"retriever": name, "valid": list(valid)}
        )


class _PrecomputedQuery:
    """A QueryEncoder that returns an already computed vector, so index search time excludes embedding."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def encode_query(self, text: str) -> np.ndarray:
        return self.vector


def _embed_query(model_name: str, query: str, timings: dict | None) -> np.ndarray:
    from workers.runtime.embedders import get_embedder

    embedder = get_embedder(model_name, threads=settings.PARSIMONY_TORCH_THREADS)
    # The seconds the model spent on this query (not the wait for another thread's turn on it).
    vectors, seconds = embedder.encode_timed([query], batch_size=1)
    if timings is not None:
        timings["embed_query_ms"] = timings.get("embed_query_ms", 0.0) + 1000 * seconds
    return vectors[0]


def _hits_to_chunks(hits: list, k: int) -> list[ChunkHit]:
    ids = [int(h.chunk_id) for h in hits]
    chunks = {
        c.vector_id: c
        for c in Chunk.objects.filter(vector_id__in=ids, document__status=DocumentStatus.READY).select_related(
            "document", "document__corpus"
        )
    }
    out: list[ChunkHit] = []
    for hit in hits:
        chunk = chunks.get(int(hit.chunk_id))
        if chunk is None:
            continue
        out.append(ChunkHit(chunk=chunk, score=float(hit.score), retrievers=dict(hit.retrievers)))
        if len(out) == k:
            break
    return out


def chunk_search(
    *, corpus: Corpus, query: str, retriever: str = "hybrid", k: int = 5, timings: dict | None = None
) -> list[ChunkHit]:
    """The k best chunks of ``corpus`` for ``query``, best first, each with its retriever provenance.

    ``retriever``: "dense", "bm25" or "hybrid" (the engine registry; unknown names raise
    ValidationFailed listing the valid ones). ``timings``, when given, receives
    ``embed_query_ms`` (query embedding) and ``search_ms`` (index search + fusion + the
    database fetch, without the embedding).
    """
    _check_retriever(retriever)
    if k < 1:
        raise ValidationFailed("k must be at least 1")
    if not (query or "").strip():
        raise ValidationFailed("the query is empty")
    from indexes.registry import get_retriever

    loaded = corpus_index_store().for_search(corpus.pk)
    needs_dense = retriever in ("dense", "hybrid")
    if (needs_dense and loaded.vector_index is None) or (retriever != "dense" and loaded.bm25_index is None):
        if timings is not None:
            timings.setdefault("embed_query_ms", 0.0)
            timings.setdefault("search_ms", 0.0)
        return []
    components: dict[str, Any] = {"vector_index": loaded.vector_index, "bm25_index": loaded.bm25_index}
    if needs_dense:
        components["embedder"] = _PrecomputedQuery(_embed_query(corpus.embedding_model, query, timings))
    started = time.perf_counter()
    hits = get_retriever(retriever, **components).search(query, k=k + FILTER_SLACK)
    result = _hits_to_chunks(hits, k)
    if timings is not None:
        timings["search_ms"] = timings.get("search_ms", 0.0) + 1000 * (time.perf_counter() - started)
        timings.setdefault("embed_query_ms", 0.0)
    return result


def chunk_search_many(
    *, corpora: list, query: str, retriever: str = "hybrid", k: int = 5, timings: dict | None = None
) -> list[ChunkHit]:
    """Search several corpora as one: per-retriever lists are merged across corpora by score,
    then fused exactly as within one corpus (``indexes.hybrid.fuse``, the hybrid weights).

    Query embeddings are computed once per embedding model.
    """
    _check_retriever(retriever)
    corpora = list(corpora)
    if len(corpora) == 1:
        return chunk_search(corpus=corpora[0], query=query, retriever=retriever, k=k, timings=timings)
    if k < 1:
        raise ValidationFailed("k must be at least 1")
    if not (query or "").strip():
        raise ValidationFailed("the query is empty")
    from indexes.hybrid import DEFAULT_FUSION_METHOD, SearchHit, fuse, hybrid_weights
    from indexes.registry import DEFAULT_CANDIDATES

    depth = max(k, DEFAULT_CANDIDATES) if retriever == "hybrid" else k + FILTER_SLACK
    vectors: dict[str, np.ndarray] = {}
    search_seconds = 0.0
    dense: list[tuple[int, float]] = []
    bm25: list[tuple[int, float]] = []
    store = corpus_index_store()
    for corpus in corpora:
        loaded = store.for_search(corpus.pk)
        if retriever in ("dense", "hybrid") and loaded.vector_index is not None:
            if corpus.embedding_model not in vectors:
                vectors[corpus.embedding_model] = _embed_query(corpus.embedding_model, query, timings)
            started = time.perf_counter()
            scores, ids = loaded.vector_index.search(vectors[corpus.embedding_model], depth)
            dense.extend((int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0)
            search_seconds += time.perf_counter() - started
        if retriever in ("bm25", "hybrid") and loaded.bm25_index is not None:
            started = time.perf_counter()
            bm25.extend(loaded.bm25_index.search(query, depth))
            search_seconds += time.perf_counter() - started
    started = time.perf_counter()
    dense.sort(key=lambda p: (-p[1], p[0]))
    bm25.sort(key=lambda p: (-p[1], p[0]))
    if retriever == "hybrid":
        hits = fuse(
            {"dense": dense[:depth], "bm25": bm25[:depth]},
            weights=hybrid_weights(),
            method=DEFAULT_FUSION_METHOD,
            k=k + FILTER_SLACK,
        )
    else:
        pairs = dense if retriever == "dense" else bm25
        hits = [SearchHit(c, s, {retriever: (r, s)}) for r, (c, s) in enumerate(pairs[: k + FILTER_SLACK], start=1)]
    result = _hits_to_chunks(hits, k)
    if timings is not None:
        timings["search_ms"] = timings.get("search_ms", 0.0) + 1000 * (search_seconds + time.perf_counter() - started)
        timings.setdefault("embed_query_ms", 0.0)
    return result
