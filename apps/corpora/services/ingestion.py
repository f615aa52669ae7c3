"""Ingestion: parse, chunk, embed and index a batch of documents (one Job may carry many).

  1. parse + chunk each document (a failure marks that document failed, nothing else);
  2. embed every chunk of the batch, in slabs, reporting ``chunks embedded / total``;
  3. one DB transaction replaces the documents' chunks (old ones deleted, new ones
     created, ``vector_id`` = chunk pk); documents stay ``processing``;
  4. under the index lock: remove the old and new ids from FAISS, add exactly the new
     ids, save atomically; rebuild BM25 from the DB; save atomically (``index_apply``);
  5. one DB transaction marks the documents ready and writes the embedding ledger row.
A worker killed anywhere in between leaves the documents ``processing``; searches only
return chunks of ready documents, and the retry starts again at 1, first removing the
vectors and chunks of the earlier attempt, so exactly one copy remains.

Billing (cost path ``ingest``): a job resumes the hold its upload opened (``reservation_id``
in its params), makes it cover the bound of the chunks it really made before embedding them
(``Hold.ensure``), and settles it to its rows when done (a failure settles what was billed, or
releases it). Called without a hold (``manage.py ingest``, the demo seeder), each corpus's
batch opens its own after parsing, sized from its exact chunks; a budget that refuses the hold
(or its growth) fails that batch's documents with the budget's message.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F

from apps.core.errors import ServiceError
from apps.corpora.models import Chunk, Corpus, Document, DocumentStatus
from apps.corpora.services.embedding import (
    ProgressFn,
    embedder_for,
    embedding_usage_record,
    encode_in_slabs,
    texts_bound,
)
from apps.corpora.services.index_build import index_apply
from apps.corpora.services.parsing import document_parse
from apps.corpora.services.storage import default_title, original_read
from apps.costs.services import LedgerContext
from apps.costs.services.holds import Hold, hold_open, hold_resume

logger = logging.getLogger(__name__)

# An in-process batch's hold lives while it embeds (its bound, with room for a slow machine).
_BATCH_HOLD_TTL_S = 6 * 3600


def documents_ingest(
    *, documents: Iterable[Document], progress: ProgressFn | None = None, hold: Hold | None = None
) -> dict[str, Any]:
    """Parse, chunk, embed and index documents (steps 1-5 of the module docstring).

    Idempotent: ready and failed documents are skipped; queued or processing ones (a crashed
    earlier attempt) are done again from the start. Returns counts for the Job result.
    ``hold``: the reservation the embedding is billed under (settled here); None: each corpus's
    batch reserves its own.
    """
    documents = [d for d in documents if d.status in (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)]
    result = {"documents": 0, "ready": 0, "failed": 0, "chunks": 0, "tokens": 0}
    by_corpus: dict[int, list[Document]] = defaultdict(list)
    for document in documents:
        by_corpus[document.corpus_id].append(document)
    done_before = 0
    try:
        for docs in by_corpus.values():
            part = _ingest_corpus_batch(docs, progress, done_before, hold)
            done_before += part["chunks"]
            for key in result:
                result[key] += part[key]
    except BaseException:
        if hold is not None:
            hold.settle()  # what was billed (no rows: released)
        raise
    if hold is not None:
        hold.settle()
    return result


def documents_ingest_by_ids(
    *,
    document_ids: Iterable[int],
    progress: ProgressFn | None = None,
    reservation_id: int | None = None,
) -> dict[str, Any]:
    """What an ingestion job does: ingest the documents still present, counting the deleted ones as
    ``missing``, under the hold its upload opened (``reservation_id``)."""
    ids = [int(i) for i in document_ids]
    documents = list(Document.objects.filter(pk__in=ids).select_related("corpus__team").order_by("pk"))
    missing = len(ids) - len(documents)
    if missing:
        logger.info("%d document(s) were deleted before ingestion", missing)
    hold = None
    if reservation_id is not None:
        from apps.costs.models import Reservation

        reservation = Reservation.objects.select_related("team", "user", "api_key").get(pk=reservation_id)
        context = LedgerContext(team=reservation.team, user=reservation.user, api_key=reservation.api_key)
        hold = hold_resume(reservation=reservation, context=context, path="ingest")
    result = documents_ingest(documents=documents, progress=progress, hold=hold)
    result["missing"] = missing
    return result


def document_ingest(*, document: Document, progress: ProgressFn | None = None) -> Document:
    """Ingest one document in-process (what the task does for each document of its job)."""
    documents_ingest(documents=[document], progress=progress)
    document.refresh_from_db()
    return document


def _parse_name(document: Document) -> str:
    """The name whose extension picks the parser: the stored file's (records are stored as .txt)."""
    stored_ext = os.path.splitext(document.file_path)[1].lower()
    if stored_ext and os.path.splitext(document.filename)[1].lower() != stored_ext:
        return document.filename + stored_ext
    return document.filename


def _document_fail(document: Document, message: str) -> None:
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.FAILED, error=message[:10_000])
    document.status, document.error = DocumentStatus.FAILED, message


def _parse_and_chunk(
    corpus: Corpus, documents: list[Document], embedder: Any
) -> tuple[list[Document], dict[int, list]]:
    """Step 1: the documents that parsed into at least one chunk, and their chunks; others fail."""
    from workers.ingest.chunking import chunk_text
    from workers.ingest.parsers import DocumentParseError

    chunked: dict[int, list] = {}
    ok: list[Document] = []
    for document in documents:
        document.status = DocumentStatus.PROCESSING
        try:
            parsed = document_parse(
                filename=_parse_name(document), data=original_read(document), media_type=document.media_type or None
            )
            pieces = chunk_text(
                parsed.text,
                tokenizer=embedder.tokenizer,
                chunk_tokens=corpus.chunk_tokens,
                overlap_tokens=corpus.overlap_tokens,
                max_tokens=embedder.max_chunk_tokens,
            )
            if not pieces:
                raise DocumentParseError("document contains no text")
        except DocumentParseError as exc:
            _document_fail(document, exc.message)
            continue
        if not document.title or document.title == default_title(document.filename):
            document.title = parsed.title[:500]
        document.media_type = parsed.media_type
        chunked[document.pk] = pieces
        ok.append(document)
    return ok, chunked


def _chunks_replace(*, documents: list[Document], chunked: dict[int, list]) -> tuple[list[int], dict[int, list[int]]]:
    """Step 3: in one transaction, delete the documents' old chunks and create the new ones.

    Returns (old vector ids, {document id: new vector ids in chunk order}).
    """
    with transaction.atomic():
        doc_ids = [d.pk for d in documents]
        old_ids = [
            int(v)
            for v in Chunk.objects.filter(document_id__in=doc_ids)
            .exclude(vector_id=None)
            .values_list("vector_id", flat=True)
        ]
        Chunk.objects.filter(document_id__in=doc_ids).delete()
        rows = [
            Chunk(
                document_id=doc_id,
                ordinal=ordinal,
                text=piece.text,
                token_count=piece.token_count,
                char_start=piece.start,
                char_end=piece.end,
            )
            for doc_id in doc_ids
            for ordinal, piece in enumerate(chunked[doc_id])
        ]
        Chunk.objects.bulk_create(rows, batch_size=1000)
        Chunk.objects.filter(document_id__in=doc_ids, vector_id=None).update(vector_id=F("pk"))
        new_ids: dict[int, list[int]] = defaultdict(list)
        for doc_id, vector_id in (
            Chunk.objects.filter(document_id__in=doc_ids)
            .order_by("document_id", "ordinal")
            .values_list("document_id", "vector_id")
        ):
            new_ids[doc_id].append(int(vector_id))
    return old_ids, new_ids


def _documents_mark_ready(
    *, corpus: Corpus, documents: list[Document], token_counts: dict[int, int], ledger: Callable[[], None]
) -> None:
    """Step 5: the documents become searchable, and the embedding is billed, in one transaction."""
    with transaction.atomic():
        for document in documents:
            fields = {"status": DocumentStatus.READY, "error": "", "token_count": token_counts[document.pk]}
            fields.update({"title": document.title, "media_type": document.media_type})
            Document.objects.filter(pk=document.pk).update(**fields)
            document.status, document.error, document.token_count = DocumentStatus.READY, "", token_counts[document.pk]
        ledger()


def _batch_bound(corpus: Corpus, ok: list[Document], chunked: dict[int, list]) -> Decimal:
    """The bound of embedding the batch's chunks here as ``_embed_and_index`` will: their exact tokens,
    padded per batch, one call per slab (``embedding.calls_bound``)."""
    texts = [piece.text for document in ok for piece in chunked[document.pk]]
    return texts_bound(model_name=corpus.embedding_model, texts=texts, here=True)


def _batch_hold_open(corpus: Corpus, bound: Decimal, ok: list[Document]) -> Hold:
    """An in-process batch's own hold: the bound of its exact chunks."""
    return hold_open(
        path="ingest",
        context=LedgerContext(team=corpus.team),
        estimate=bound,
        description=f"ingest {len(ok)} document(s) into {corpus.name}",
        ttl_s=_BATCH_HOLD_TTL_S,
    )


def _ingest_corpus_batch(
    documents: list[Document], progress: ProgressFn | None, done_before: int, hold: Hold | None
) -> dict[str, Any]:
    corpus = Corpus.objects.select_related("team").get(pk=documents[0].corpus_id)
    Document.objects.filter(pk__in=[d.pk for d in documents]).update(status=DocumentStatus.PROCESSING, error="")
    embedder = embedder_for(corpus.embedding_model)
    ok, chunked = _parse_and_chunk(corpus, documents, embedder)
    result = {"documents": len(documents), "ready": 0, "failed": len(documents) - len(ok), "chunks": 0, "tokens": 0}
    if not ok:
        return result
    bound = _batch_bound(corpus, ok, chunked)
    own = None
    try:
        if hold is None:
            hold = own = _batch_hold_open(corpus, bound, ok)
        else:
            # The upload reserved the chunks it expected: make sure the hold covers the ones made.
            hold.ensure(bound)
    except ServiceError as exc:  # a budget refused it: these documents are not embedded
        for document in ok:
            _document_fail(document, exc.message)
        result["failed"] = len(documents)
        return result
    if own is None:
        return _embed_and_index(corpus, embedder, ok, chunked, progress, done_before, hold, result)
    try:
        result = _embed_and_index(corpus, embedder, ok, chunked, progress, done_before, own, result)
    except BaseException:
        own.settle()
        raise
    own.settle()
    return result


def _embed_and_index(
    corpus: Corpus,
    embedder: Any,
    ok: list[Document],
    chunked: dict[int, list],
    progress: ProgressFn | None,
    done_before: int,
    hold: Hold,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Steps 2-5 for the documents that parsed, billed under ``hold`` (settled by the caller)."""
    texts = [piece.text for document in ok for piece in chunked[document.pk]]
    total = done_before + len(texts)
    if progress is not None:
        progress(done_before, total, f"embedding {len(texts)} chunks of {len(ok)} documents")
    vectors, seconds = encode_in_slabs(embedder, texts, progress, done_before=done_before, total=total)

    old_ids, new_ids = _chunks_replace(documents=ok, chunked=chunked)
    add_ids = [vector_id for document in ok for vector_id in new_ids[document.pk]]
    assert len(add_ids) == len(vectors), (len(add_ids), len(vectors))
    index_apply(
        corpus=corpus,
        dimension=embedder.dimension,
        remove_ids=old_ids,
        add_ids=add_ids,
        vectors=vectors,
        also_documents=[d.pk for d in ok],
    )
    token_counts = {d.pk: sum(p.token_count for p in chunked[d.pk]) for d in ok}
    tokens_by_user: dict[Any, int] = defaultdict(int)
    uploaders = {
        d.pk: d.uploaded_by
        for d in Document.objects.filter(pk__in=token_counts).select_related("uploaded_by")
    }
    for doc_id, tokens in token_counts.items():
        tokens_by_user[uploaders[doc_id]] += tokens
    _documents_mark_ready(
        corpus=corpus,
        documents=ok,
        token_counts=token_counts,
        ledger=lambda: embedding_usage_record(
            corpus=corpus, embedder=embedder, tokens_by_user=tokens_by_user, seconds=seconds,
            reservation=hold.reservation, api_key=hold.context.api_key,
        ),
    )
    result.update(ready=len(ok), chunks=len(add_ids), tokens=sum(token_counts.values()))
    return result
