"""Documents in and out of a corpus: uploads, bulk record imports, starting ingestion jobs, deletes.

Ingestion spends (embedding): every job carries a hold (cost path ``ingest``) opened here, in the
web process, BEFORE anything is stored, with a bound of the embedding work of the uploaded text
(parsed and chunked as the worker will, counted with the embedding model's tokenizer);
a budget that refuses it (402) leaves no Document, no file and no Job. The worker resumes the
hold from ``job.params["reservation_id"]``, bills under it and settles (``ingestion``).
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from apps.core.errors import ValidationFailed
from apps.core.jobs import JobEnd
from apps.core.models import Job
from apps.core.services import job_start, jobs_reap
from apps.corpora.models import Corpus, Document, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services.embedding import embeds_in_this_process, texts_bound
from apps.corpora.services.index_build import bm25_rebuild, index_apply
from apps.corpora.services.parsing import document_parse
from apps.corpora.services.storage import (
    default_title,
    original_read,
    original_remove,
    original_store,
    safe_filename,
)
from apps.costs.services import LedgerContext
from apps.costs.services.holds import Hold, hold_open

INGEST_KIND = "corpora.ingest"
INGEST_JOB_DOCUMENTS = 500  # documents per ingestion job (bulk imports are split)
# An ingestion hold lives until its job has run: it may wait behind other jobs on the cpu and gpu queues
# (and is renewed for as long again between two of its gpu turns).
INGEST_HOLD_TTL_S = 6 * 3600


def upload_text(*, filename: str, data: bytes) -> str:
    """The text ingestion will read from an upload (parsed as the worker parses it); "" when it yields
    none (the worker fails it without embedding anything)."""
    from workers.ingest.parsers import DocumentParseError

    try:
        return document_parse(filename=filename, data=data).text
    except DocumentParseError:
        return ""


def ingest_bound(*, corpus: Corpus, texts: Iterable[str]) -> Decimal:
    """The most embedding these parsed texts into ``corpus`` can cost, in the order its job embeds them.

    Each text is chunked exactly as ingestion chunks it (the corpus's chunk and overlap sizes, the
    embedding model's own tokenizer, loaded without its weights), and the chunks' encode work is
    bounded (``embedding.calls_bound``: their exact tokens, padded per batch as the embedder pads).
    The worker checks the hold against the chunks it really made before it embeds (``Hold.ensure``).
    """
    from apps.costs.tokens import embedding_tokenizer
    from workers.ingest.chunking import chunk_text

    tokenizer = embedding_tokenizer(corpus.embedding_model)
    max_tokens = int(tokenizer.model_max_length) - int(tokenizer.num_special_tokens_to_add(False))
    pieces = [
        piece.text
        for text in texts
        if text
        for piece in chunk_text(
            text,
            tokenizer=tokenizer,
            chunk_tokens=corpus.chunk_tokens,
            overlap_tokens=corpus.overlap_tokens,
            max_tokens=max_tokens,
        )
    ]
    return texts_bound(model_name=corpus.embedding_model, texts=pieces, here=embeds_in_this_process(job=True))


def ingest_hold_open(*, corpus: Corpus, texts: Iterable[str], user: Any = None, api_key: Any = None) -> Hold:
    """Reserve the embedding of these parsed texts into ``corpus`` (402 BudgetExceeded when a budget refuses)."""
    texts = list(texts)
    return hold_open(
        path="ingest",
        context=LedgerContext(team=corpus.team, user=user, api_key=api_key),
        estimate=ingest_bound(corpus=corpus, texts=texts),
        description=f"ingest {len(texts)} document(s) into {corpus.name}",
        ttl_s=INGEST_HOLD_TTL_S,
    )


def _stored_text(document: Document) -> str:
    """``upload_text`` of a stored document (its stored file's extension picks the format)."""
    from workers.ingest.parsers import DocumentParseError

    try:
        data = original_read(document)
    except (DocumentParseError, OSError):
        return ""
    return upload_text(filename="stored" + os.path.splitext(document.file_path)[1], data=data)


def _ingest_job_start(*, corpus_id: int, team: Any, documents: list[Document], user: Any, hold: Hold) -> Job:
    params = {
        "corpus_id": corpus_id,
        "document_ids": [d.pk for d in documents],
        "reservation_id": hold.reservation.pk,
    }
    return job_start(kind=INGEST_KIND, team=team, created_by=user, params=params)


def documents_ingest_start(
    *, documents: Iterable[Document], user: Any = None, api_key: Any = None, hold: Hold | None = None
) -> list[Job]:
    """Start ingestion jobs (parsed on the cpu queue, embedded on the gpu queue), each under its own hold.

    With ``hold`` (opened by the caller before it stored anything): one job for all the documents.
    Without: one job per INGEST_JOB_DOCUMENTS documents per corpus, each batch reserving from its
    stored texts first; when one is refused, the others are released and nothing starts.
    """
    documents = list(documents)
    if hold is not None:
        if not documents:
            hold.release()
            return []
        return [
            _ingest_job_start(corpus_id=documents[0].corpus_id, team=documents[0].corpus.team,
                              documents=documents, user=user, hold=hold)
        ]
    by_corpus: dict[int, list[Document]] = defaultdict(list)
    for document in documents:
        by_corpus[document.corpus_id].append(document)
    planned: list[tuple[Corpus, list[Document], Hold]] = []
    try:
        for docs in by_corpus.values():
            corpus = docs[0].corpus
            for i in range(0, len(docs), INGEST_JOB_DOCUMENTS):
                batch = docs[i : i + INGEST_JOB_DOCUMENTS]
                texts = [_stored_text(d) for d in batch]
                planned.append((corpus, batch, ingest_hold_open(corpus=corpus, texts=texts, user=user,
                                                                api_key=api_key)))
    except BaseException:
        for _, _, opened in planned:
            opened.release()
        raise
    return [
        _ingest_job_start(corpus_id=corpus.pk, team=corpus.team, documents=batch, user=user, hold=opened)
        for corpus, batch, opened in planned
    ]


def document_upload(
    *,
    corpus: Corpus,
    filename: str,
    data: bytes,
    user: Any = None,
    media_type: str | None = None,
    start_job: bool = True,
    api_key: Any = None,
) -> Document:
    """Store an uploaded file and queue its ingestion.

    Oversize or unsupported files become a failed Document (with the reason) at once and
    change nothing else. A file identical (sha256) to a non-failed document of the corpus
    returns that document: no new chunks. One identical to a failed document (or one stuck under a
    dead worker's job, which ``jobs_reap`` fails first) queues that document again: it really ingests.
    With ``start_job`` the embedding is reserved first
    (402 BudgetExceeded: nothing is stored). ``start_job=False`` leaves it queued for a caller
    that reserves itself (``ingest_hold_open`` + ``documents_ingest_start(hold=...)``) or ingests
    in-process (``documents_ingest``, which reserves its own hold).
    """
    from workers.ingest.parsers import SUPPORTED_EXTENSIONS, DocumentParseError, check_size

    filename = safe_filename(filename)
    sha256 = hashlib.sha256(data).hexdigest()
    jobs_reap()  # a document stuck under a dead worker's job is failed (or redelivered) first
    same = corpus.documents.filter(sha256=sha256)
    existing = same.exclude(status=DocumentStatus.FAILED).order_by("pk").first()
    if existing is not None:
        return existing
    # The same file failed before: this upload ingests that document again (its chunks are replaced).
    again = same.exclude(file_path="").order_by("-pk").first()
    ext = os.path.splitext(filename)[1].lower()
    guessed = media_type or mimetypes.guess_type(filename)[0] or ""
    base = {
        "corpus": corpus,
        "title": default_title(filename),
        "filename": filename,
        "media_type": guessed[:120],
        "sha256": sha256,
        "size": len(data),
        "uploaded_by": user if getattr(user, "pk", None) else None,
    }
    try:
        check_size(len(data), settings.PARSIMONY_MAX_UPLOAD_BYTES)
        if ext not in SUPPORTED_EXTENSIONS:
            shown = f"'{ext}'" if ext else "without an extension"
            raise DocumentParseError(f"unsupported file type {shown} (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
    except DocumentParseError as exc:
        return Document.objects.create(**base, status=DocumentStatus.FAILED, error=exc.message)
    hold = None
    if start_job:
        hold = ingest_hold_open(
            corpus=corpus, texts=[upload_text(filename=filename, data=data)], user=user, api_key=api_key
        )
    try:
        path = original_store(corpus=corpus, sha256=sha256, ext=ext, data=data)
        if again is not None:
            document = _document_queue_again(again, file_path=path, filename=filename, uploaded_by=base["uploaded_by"])
        else:
            document = Document.objects.create(**base, file_path=path, status=DocumentStatus.QUEUED)
        if hold is not None:
            documents_ingest_start(documents=[document], user=user, hold=hold)
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    return document


def _document_queue_again(document: Document, **fields: Any) -> Document:
    """A failed document uploaded again: queued for ingestion, as uploaded now."""
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.QUEUED, error="", **fields)
    document.refresh_from_db()
    return document


def documents_import_records(
    *,
    corpus: Corpus,
    filename: str,
    data: bytes,
    text_field: str = "text",
    title_field: str = "title",
    id_field: str | None = None,
    user: Any = None,
    start_job: bool = True,
    api_key: Any = None,
) -> list[Document]:
    """Bulk import: one Document per .jsonl line / .csv row, then batched ingestion jobs.

    A bad record rejects the whole file (ValidationFailed naming the line): nothing is
    created. Records identical to a document already in the corpus (or earlier in the file)
    are skipped; records whose document failed (or was stuck under a dead worker) are ingested again in
    that document. With ``start_job`` each batch's embedding is reserved before anything is stored
    (402: nothing is). Returns the documents created or queued again.
    """
    from workers.ingest.parsers import DocumentParseError, check_size, iter_records

    filename = safe_filename(filename)
    try:
        check_size(len(data), settings.PARSIMONY_MAX_UPLOAD_BYTES)
        records = list(
            iter_records(
                filename=filename,
                data=data,
                text_field=text_field,
                title_field=title_field,
                id_field=id_field,
            )
        )
    except DocumentParseError as exc:
        raise ValidationFailed(f"{filename}: {exc.message}", detail={"filename": filename}) from exc
    jobs_reap()  # documents stuck under a dead worker's job are failed (or redelivered) first
    seen = set(corpus.documents.exclude(status=DocumentStatus.FAILED).values_list("sha256", flat=True))
    # Records whose document failed before are ingested again, in that document (its chunks replaced).
    failed = dict(
        corpus.documents.filter(status=DocumentStatus.FAILED).exclude(file_path="").order_by("pk")
        .values_list("sha256", "pk")
    )
    uploader = user if getattr(user, "pk", None) else None
    fresh: list[tuple[int, Any, bytes, str]] = []
    for number, record in enumerate(records, start=1):
        body = record.text.encode("utf-8")
        sha256 = hashlib.sha256(body).hexdigest()
        if sha256 in seen:
            continue
        seen.add(sha256)
        fresh.append((number, record, body, sha256))
    holds: list[Hold] = []
    try:
        if start_job:
            for i in range(0, len(fresh), INGEST_JOB_DOCUMENTS):
                # Stored as .txt: the worker parses each record's text as a text file.
                batch = fresh[i : i + INGEST_JOB_DOCUMENTS]
                texts = [upload_text(filename="record.txt", data=body) for _, _, body, _ in batch]
                holds.append(ingest_hold_open(corpus=corpus, texts=texts, user=user, api_key=api_key))
        stored = {
            sha256: original_store(corpus=corpus, sha256=sha256, ext=".txt", data=body, fsync=False)
            for _, _, body, sha256 in fresh
        }
        to_create = [
            Document(
                corpus=corpus,
                title=record.title[:500],
                filename=f"{filename}#{record.external_id or number}"[:500],
                file_path=stored[sha256],
                media_type="text/plain",
                sha256=sha256,
                size=len(body),
                external_id=(record.external_id or "")[:255],
                uploaded_by=uploader,
                status=DocumentStatus.QUEUED,
            )
            for number, record, body, sha256 in fresh
            if sha256 not in failed
        ]
        again = [failed[sha256] for _, _, _, sha256 in fresh if sha256 in failed]
        with transaction.atomic():
            created = Document.objects.bulk_create(to_create, batch_size=500)
            if created and created[0].pk is None:  # databases that do not return ids from bulk inserts
                shas = [d.sha256 for d in to_create]
                created = list(corpus.documents.filter(sha256__in=shas, status=DocumentStatus.QUEUED).order_by("pk"))
            Document.objects.filter(pk__in=again).update(status=DocumentStatus.QUEUED, error="", uploaded_by=uploader)
            by_sha = {d.sha256: d for d in [*created, *Document.objects.filter(pk__in=again)]}
            documents = [by_sha[sha256] for _, _, _, sha256 in fresh]
            for index, hold in enumerate(holds):
                batch = documents[index * INGEST_JOB_DOCUMENTS : (index + 1) * INGEST_JOB_DOCUMENTS]
                documents_ingest_start(documents=batch, user=user, hold=hold)
    except BaseException:
        for hold in holds:
            hold.release()
        raise
    return documents


def ingest_job_end(*, job: Job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """An ingestion job ended without finishing its documents (``apps.core.services.job_end``): those still
    queued or processing go back to queued when it is redelivered (its next attempt redoes them from the
    start), else fail with the reason, so a re-upload ingests them again (``document_upload``)."""
    unfinished = Document.objects.filter(
        pk__in=job.params.get("document_ids", []), status__in=(DocumentStatus.QUEUED, DocumentStatus.PROCESSING)
    )
    if outcome == JobEnd.REDELIVERED:
        unfinished.update(status=DocumentStatus.QUEUED, error="")
    else:
        why = "ingestion cancelled" if outcome == JobEnd.CANCELLED else f"ingestion failed: {reason}"
        unfinished.update(status=DocumentStatus.FAILED, error=why[:10_000])


def document_delete(*, document: Document) -> None:
    """Delete a document: its chunks, its vectors in FAISS, its stored file; BM25 is rebuilt."""
    corpus = Corpus.objects.select_related("team").get(pk=document.corpus_id)
    vector_ids = [int(v) for v in document.chunks.exclude(vector_id=None).values_list("vector_id", flat=True)]
    file_path = document.file_path
    with transaction.atomic():
        document.delete()
    if file_path and not Document.objects.filter(corpus=corpus, file_path=file_path).exists():
        original_remove(file_path)
    store = corpus_index_store()
    stamp = store.stamp(corpus.pk)
    if stamp[0] is not None:
        index_apply(corpus=corpus, dimension=0, remove_ids=vector_ids, add_ids=[], vectors=None)
    elif stamp[1] is not None or store.folder(corpus.pk).exists():
        bm25_rebuild(corpus=corpus)
