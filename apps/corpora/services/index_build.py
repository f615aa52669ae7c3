"""Writes to a corpus's FAISS and BM25 indexes: apply exact id changes, or rebuild from the database.

FAISS holds vectors only, keyed by ``Chunk.vector_id``; BM25 is always rebuilt from the chunk
texts in the database. Every write holds the corpus folder's lock around load -> modify -> save
(``indexes.corpus_store``), so two workers never lose each other's changes.

A rebuild re-embeds every chunk (cost path ``index_rebuild``): it reserves the bound of its
chunks' exact token counts before the job exists (402: no job); the worker makes the hold cover
the chunks it embeds (``Hold.ensure``: chunks that became ready since, and those ingested while
it runs), bills under it and settles it; an in-process rebuild (``manage.py rebuild_index``)
reserves its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Q

from apps.core.errors import ServiceError
from apps.core.models import Job
from apps.core.services import job_start
from apps.corpora.models import Chunk, Corpus, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services.embedding import (
    ProgressFn,
    calls_bound,
    embedder_for,
    embedding_usage_record,
    embeds_in_this_process,
    encode_in_slabs,
    slab_calls,
    texts_bound,
)
from apps.costs.services import LedgerContext
from apps.costs.services.holds import Hold, hold_open, hold_resume

logger = logging.getLogger(__name__)

REBUILD_KIND = "corpora.rebuild_index"
REBUILD_HOLD_TTL_S = 6 * 3600  # the job may wait behind others on the gpu queue


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


def rebuild_bound(*, corpus: Corpus):
    """The most re-embedding ``corpus``'s ready chunks can cost, as the rebuild embeds them (by vector id, one
    call per slab): their exact tokens as the model reads them (stored count + its special tokens),
    padded per batch (``embedding.calls_bound``). Chunks that arrive while it runs are covered by
    the job itself (``Hold.ensure`` before it embeds them)."""
    from django.db.models.functions import Length

    from apps.costs.tokens import embedding_tokenizer

    tokenizer = embedding_tokenizer(corpus.embedding_model)
    specials, limit = int(tokenizer.num_special_tokens_to_add(False)), int(tokenizer.model_max_length)
    rows = list(
        Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
        .exclude(vector_id=None)
        .order_by("vector_id")
        .values_list("token_count", Length("text"))
    )
    calls = slab_calls([r[1] for r in rows], [min(r[0] + specials, limit) for r in rows])
    return calls_bound(model_name=corpus.embedding_model, calls=calls, here=embeds_in_this_process(job=True))


def rebuild_hold_open(*, corpus: Corpus, user: Any = None, api_key: Any = None) -> Hold:
    """Reserve a rebuild of ``corpus`` (402 BudgetExceeded when a budget refuses it)."""
    return hold_open(
        path="index_rebuild",
        context=LedgerContext(team=corpus.team, user=user, api_key=api_key),
        estimate=rebuild_bound(corpus=corpus),
        description=f"rebuild the index of {corpus.name}",
        ttl_s=REBUILD_HOLD_TTL_S,
    )


def corpus_index_rebuild(
    *, corpus: Corpus, progress: ProgressFn | None = None, hold: Hold | None = None
) -> dict[str, Any]:
    """Rebuild FAISS and BM25 from the database (chunks of ready documents), re-embedding the texts.

    The new index type is resolved by size ("auto"); both are saved atomically and swapped in.
    Billed under ``hold`` (settled here); without one it reserves its own first (402 when refused).
    """
    corpus = Corpus.objects.select_related("team").get(pk=corpus.pk)
    hold = hold or rebuild_hold_open(corpus=corpus)
    try:
        result = _rebuild(corpus=corpus, progress=progress, hold=hold)
    except BaseException:
        hold.settle()
        raise
    hold.settle()
    return result


def _rebuild(*, corpus: Corpus, progress: ProgressFn | None, hold: Hold) -> dict[str, Any]:
    from indexes.bm25 import BM25Index
    from indexes.corpus_store import LoadedIndexes
    from indexes.vector_index import VectorIndex

    embedder = embedder_for(corpus.embedding_model)
    rows = list(
        Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
        .exclude(vector_id=None)
        .order_by("vector_id")
        .values_list("vector_id", "text", "token_count")
    )
    ids = [int(r[0]) for r in rows]
    texts = [r[1] for r in rows]
    # The hold covers these chunks (the start counted the same rows; more may be ready by now).
    bound = texts_bound(model_name=corpus.embedding_model, texts=texts, here=True)
    hold.ensure(bound)
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
            late_texts = [current[i] for i in late]
            late_bound = texts_bound(model_name=corpus.embedding_model, texts=late_texts, here=True)
            try:
                hold.ensure(bound + late_bound)
            except ServiceError:  # a budget refused them: bill what ran, keep the old index
                _rebuild_bill(corpus, embedder, hold, rows, seconds)
                raise
            late_vectors, late_seconds = encode_in_slabs(embedder, late_texts, None)
            vector_index.add(late, late_vectors)
            seconds += late_seconds
        bm25_index = BM25Index.build(sorted(current.items()))
        store.vector_save(corpus.pk, vector_index)
        store.bm25_save(corpus.pk, bm25_index)
        store.remember(
            corpus.pk, LoadedIndexes(stamp=store.stamp(corpus.pk), vector_index=vector_index, bm25_index=bm25_index)
        )
    _rebuild_bill(corpus, embedder, hold, rows, seconds)
    return {"chunks": vector_index.count, "index_type": vector_index.index_type, "encode_seconds": round(seconds, 3)}


def _rebuild_bill(corpus: Corpus, embedder: Any, hold: Hold, rows: list, seconds: float) -> None:
    """The rebuild's ``embed`` row under its hold."""
    with transaction.atomic():
        embedding_usage_record(
            corpus=corpus, embedder=embedder, tokens_by_user={hold.context.user: sum(r[2] for r in rows)},
            seconds=seconds, reservation=hold.reservation, api_key=hold.context.api_key,
        )


def corpus_index_rebuild_by_id(
    *, corpus_id: int | None, progress: ProgressFn | None = None, reservation_id: int | None = None
) -> dict[str, Any]:
    """What a rebuild job does: rebuild the corpus if it still exists (else report it missing), under
    the hold its start opened (``reservation_id``)."""
    hold = None
    if reservation_id is not None:
        from apps.costs.models import Reservation

        reservation = Reservation.objects.select_related("team", "user", "api_key").get(pk=reservation_id)
        context = LedgerContext(team=reservation.team, user=reservation.user, api_key=reservation.api_key)
        hold = hold_resume(reservation=reservation, context=context, path="index_rebuild")
    corpus = Corpus.objects.filter(pk=corpus_id).first()
    if corpus is None:
        logger.warning("corpus %s no longer exists: nothing to rebuild", corpus_id)
        if hold is not None:
            hold.release()
        return {"chunks": 0, "missing": True}
    return corpus_index_rebuild(corpus=corpus, progress=progress, hold=hold)


@transaction.atomic
def corpus_index_rebuild_start(*, corpus: Corpus, user: Any = None, api_key: Any = None) -> Job:
    """Reserve the rebuild (402 BudgetExceeded: no job), then run it in a background job on the gpu queue."""
    hold = rebuild_hold_open(corpus=corpus, user=user, api_key=api_key)
    return job_start(
        kind=REBUILD_KIND, team=corpus.team, created_by=user,
        params={"corpus_id": corpus.pk, "reservation_id": hold.reservation.pk},
    )
