"""Documents in and out of a corpus: uploads, bulk record imports, starting ingestion jobs, deletes."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction

from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.core.services import job_start
from apps.corpora.models import Corpus, Document, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services.index_build import bm25_rebuild, index_apply
from apps.corpora.services.storage import default_title, original_remove, original_store, safe_filename

INGEST_KIND = "corpora.ingest"
INGEST_JOB_DOCUMENTS = 500  # documents per ingestion job (bulk imports are split)


def documents_ingest_start(*, documents: Iterable[Document], user: Any = None) -> list[Job]:
    """Start ingestion jobs on the gpu queue (one per INGEST_JOB_DOCUMENTS documents, per corpus)."""
    by_corpus: dict[int, list[Document]] = defaultdict(list)
    for document in documents:
        by_corpus[document.corpus_id].append(document)
    jobs = []
    for corpus_id, docs in by_corpus.items():
        team = docs[0].corpus.team
        for i in range(0, len(docs), INGEST_JOB_DOCUMENTS):
            batch = docs[i : i + INGEST_JOB_DOCUMENTS]
            jobs.append(
                job_start(
                    kind=INGEST_KIND,
                    team=team,
                    created_by=user,
                    params={"corpus_id": corpus_id, "document_ids": [d.pk for d in batch]},
                )
            )
    return jobs


def document_upload(
    *,
    corpus: Corpus,
    filename: str,
    data: bytes,
    user: Any = None,
    media_type: str | None = None,
    start_job: bool = True,
) -> Document:
    """Store an uploaded file and queue its ingestion.

    Oversize or unsupported files become a failed Document (with the reason) at once and
    change nothing else. A file identical (sha256) to a non-failed document of the corpus
    returns that document: no new chunks. ``start_job=False`` leaves it queued for a caller
    that ingests in-process (``documents_ingest``).
    """
    from workers.ingest.parsers import SUPPORTED_EXTENSIONS, DocumentParseError, check_size

    filename = safe_filename(filename)
    sha256 = hashlib.sha256(data).hexdigest()
    existing = corpus.documents.filter(sha256=sha256).exclude(status=DocumentStatus.FAILED).order_by("pk").first()
    if existing is not None:
        return existing
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
    path = original_store(corpus=corpus, sha256=sha256, ext=ext, data=data)
    document = Document.objects.create(**base, file_path=path, status=DocumentStatus.QUEUED)
    if start_job:
        documents_ingest_start(documents=[document], user=user)
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
) -> list[Document]:
    """Bulk import: one Document per .jsonl line / .csv row, then batched ingestion jobs.

    A bad record rejects the whole file (ValidationFailed naming the line): nothing is
    created. Records identical to a document already in the corpus (or earlier in the file)
    are skipped. Returns the documents created.
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
    seen = set(corpus.documents.exclude(status=DocumentStatus.FAILED).values_list("sha256", flat=True))
    uploader = user if getattr(user, "pk", None) else None
    to_create: list[Document] = []
    for number, record in enumerate(records, start=1):
        body = record.text.encode("utf-8")
        sha256 = hashlib.sha256(body).hexdigest()
        if sha256 in seen:
            continue
        seen.add(sha256)
        path = original_store(corpus=corpus, sha256=sha256, ext=".txt", data=body, fsync=False)
        to_create.append(
            Document(
                corpus=corpus,
                title=record.title[:500],
                filename=f"{filename}#{record.external_id or number}"[:500],
                file_path=path,
                media_type="text/plain",
                sha256=sha256,
                size=len(body),
                external_id=(record.external_id or "")[:255],
                uploaded_by=uploader,
                status=DocumentStatus.QUEUED,
            )
        )
    with transaction.atomic():
        created = Document.objects.bulk_create(to_create, batch_size=500)
        if created and created[0].pk is None:  # databases that do not return ids from bulk inserts
            shas = [d.sha256 for d in to_create]
            created = list(corpus.documents.filter(sha256__in=shas, status=DocumentStatus.QUEUED).order_by("pk"))
        if start_job and created:
            documents_ingest_start(documents=created, user=user)
    return created


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
