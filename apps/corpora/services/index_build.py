"""Writes to a corpus's FAISS and BM25 indexes: apply exact id changes, or rebuild from the database.

FAISS holds vectors only, keyed by ``Chunk.vector_id``; BM25 is always rebuilt from the chunk
texts in the database. Every write holds the corpus folder's lock around load -> modify -> save
(``indexes.corpus_store``), so two workers never lose each other's changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Q

from apps.core.models import Job
from apps.core.services import job_start
from apps.corpora.models import Chunk, Corpus, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services.embedding import ProgressFn, embedder_for, embedding_usage_record, encode_in_slabs

logger = logging.getLogger(__name__)

REBUILD_KIND = "corpora.rebuild_index"


def _bm25_pairs(corpus: Corpus, *, also_documents: Iterable[int] = ()) -> list[tuple[int, str]]:
    """(vector id, text) of the chunks of ready documents (and of ``also_documents``), by id."""
    ready = Q(document__status=DocumentStatus.READY)
    also = list(also_documents)
    if also:
        ready |= Q(document_id__in=also)
    return [
        (int(v), t)
        for v, t in Chunk.objects.filter(ready, document__corpus=corpus)
        .exclude(vector_id=None)
        .order_by("vector_id")
        .values_list("vector_id", "text")
    ]


def index_apply(
    *,
    corpus: Corpus,
    dimension: int,
    remove_ids: list[int],
    add_ids: list[int],
    vectors: Any,
    also_documents: Iterable[int] = (),
) -> None:
    """Remove then add exactly these ids in FAISS, rebuild BM25 from the DB, save both.

    ``also_documents``: documents whose chunks BM25 includes although they are not ready yet
    (ingestion marks them ready in the next step).
    """
    from indexes.bm25 import BM25Index
    from indexes.corpus_store import LoadedIndexes
    from indexes.vector_index import VectorIndex

    store = corpus_index_store()
    with store.lock(corpus.pk):
        loaded = store.load(corpus.pk)
        vector_index = loaded.vector_index
        if vector_index is None:
            vector_index = VectorIndex(
                dimension=dimension,
                index_type=corpus.index_type,
                model=corpus.embedding_model,
                expected_count=len(add_ids),
            )
        vector_index.remove(list(remove_ids) + list(add_ids))
        if add_ids:
            vector_index.add(add_ids, vectors)
        store.vector_save(corpus.pk, vector_index)
        bm25_index = BM25Index.build(_bm25_pairs(corpus, also_documents=also_documents))
        store.bm25_save(corpus.pk, bm25_index)
        store.remember(
            corpus.pk, LoadedIndexes(stamp=store.stamp(corpus.pk), vector_index=vector_index, bm25_index=bm25_index)
        )


def bm25_rebuild(*, corpus: Corpus) -> None:
    """Rebuild only BM25 from the database (a corpus without a FAISS index yet)."""
    from indexes.bm25 import BM25Index

    store = corpus_index_store()
    with store.lock(corpus.pk):
        store.bm25_save(corpus.pk, BM25Index.build(_bm25_pairs(corpus)))
    store.forget(corpus.pk)


def corpus_index_rebuild(*, corpus: Corpus, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Rebuild FAISS and BM25 from the database (chunks of ready documents), re-embedding the texts.

    The new index type is resolved by size ("auto"); both are saved atomically and swapped in.
    """
    from indexes.bm25 import BM25Index
    from indexes.corpus_store import LoadedIndexes
    from indexes.vector_index import VectorIndex

    corpus = Corpus.objects.select_related("team").get(pk=corpus.pk)
    embedder = embedder_for(corpus.embedding_model)
    rows = list(
        Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
        .exclude(vector_id=None)
        .order_by("vector_id")
        .values_list("vector_id", "text", "token_count")
    )
    ids = [int(r[0]) for r in rows]
    texts = [r[1] for r in rows]
    vectors, seconds = encode_in_slabs(embedder, texts, progress)
    vector_index = VectorIndex(
        dimension=embedder.dimension,
        index_type=corpus.index_type,
        model=corpus.embedding_model,
        expected_count=len(ids),
    )
    if ids:
        vector_index.add(ids, vectors)
    store = corpus_index_store()
    with store.lock(corpus.pk):
        # Documents ingested or deleted while we were embedding: reconcile under the lock.
        current = dict(
            Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
            .exclude(vector_id=None)
            .values_list("vector_id", "text")
        )
        vector_index.remove([i for i in ids if i not in current])
        late = sorted(set(current) - set(ids))
        if late:
            late_vectors, late_seconds = encode_in_slabs(embedder, [current[i] for i in late], None)
            vector_index.add(late, late_vectors)
            seconds += late_seconds
        bm25_index = BM25Index.build(sorted(current.items()))
        store.vector_save(corpus.pk, vector_index)
        store.bm25_save(corpus.pk, bm25_index)
        store.remember(
            corpus.pk, LoadedIndexes(stamp=store.stamp(corpus.pk), vector_index=vector_index, bm25_index=bm25_index)
        )
    with transaction.atomic():
        embedding_usage_record(
            corpus=corpus, embedder=embedder, tokens_by_user={None: sum(r[2] for r in rows)}, seconds=seconds
        )
    return {"chunks": vector_index.count, "index_type": vector_index.index_type, "encode_seconds": round(seconds, 3)}


def corpus_index_rebuild_by_id(*, corpus_id: int | None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """What a rebuild job does: rebuild the corpus if it still exists (else report it missing)."""
    corpus = Corpus.objects.filter(pk=corpus_id).first()
    if corpus is None:
        logger.warning("corpus %s no longer exists: nothing to rebuild", corpus_id)
        return {"chunks": 0, "missing": True}
    return corpus_index_rebuild(corpus=corpus, progress=progress)


def corpus_index_rebuild_start(*, corpus: Corpus, user: Any = None) -> Job:
    """Rebuild the corpus's indexes in a background job on the gpu queue."""
    return job_start(kind=REBUILD_KIND, team=corpus.team, created_by=user, params={"corpus_id": corpus.pk})
