"""Writes for corpora: corpora, uploads, bulk imports, ingestion, deletes and index rebuilds.

Ingestion of a batch of documents (one Job may carry many):
  1. parse + chunk each document (a failure marks that document failed, nothing else);
  2. embed every chunk of the batch, in slabs, reporting ``chunks embedded / total``;
  3. one DB transaction replaces the documents' chunks (old ones deleted, new ones
     created, ``vector_id`` = chunk pk); documents stay ``processing``;
  4. under the index lock: remove the old and new ids from FAISS, add exactly the new
     ids, save atomically; rebuild BM25 from the DB; save atomically;
  5. one DB transaction marks the documents ready and writes the embedding ledger row.
A worker killed anywhere in between leaves the documents ``processing``; searches only
return chunks of ready documents, and the retry starts again at 1, first removing the
vectors and chunks of the earlier attempt, so exactly one copy remains.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from apps.core.errors import ValidationFailed
from apps.corpora.models import Chunk, Corpus, Document, DocumentStatus

logger = logging.getLogger(__name__)

INGEST_KIND = "corpora.ingest"
REBUILD_KIND = "corpora.rebuild_index"
INGEST_JOB_DOCUMENTS = 500  # documents per ingestion job (bulk imports are split)
EMBED_SLAB = 512  # chunks per encode call: the embedder sorts by length inside a call
EMBED_BATCH = 64

ProgressFn = Callable[..., None]


# --------------------------------------------------------------------------- helpers


def _embedder(model_name: str):
    from workers.runtime.embedders import get_embedder

    return get_embedder(model_name, threads=settings.PARSIMONY_TORCH_THREADS)


def _validate_corpus_settings(*, embedding_model: str, chunk_tokens: int, overlap_tokens: int, index_type: str) -> None:
    from indexes.vector_index import VALID_INDEX_TYPES
    from workers.runtime.embedders import resolve_model_path

    if index_type not in VALID_INDEX_TYPES:
        raise ValidationFailed(
            f"unknown index type {index_type!r} (valid: {', '.join(VALID_INDEX_TYPES)})",
            detail={"index_type": index_type, "valid": list(VALID_INDEX_TYPES)},
        )
    if chunk_tokens < 1:
        raise ValidationFailed("chunk_tokens must be at least 1")
    if overlap_tokens < 0 or overlap_tokens >= chunk_tokens:
        raise ValidationFailed("overlap_tokens must be at least 0 and smaller than chunk_tokens")
    try:
        resolve_model_path(embedding_model)
    except (ValueError, ImportError) as exc:
        raise ValidationFailed(str(exc), detail={"embedding_model": embedding_model}) from exc


def _price_name(model_name: str) -> str:
    return "local/" + os.path.basename(model_name.rstrip("/")).lower()


def _upload_dir(corpus: Corpus) -> Path:
    return Path(settings.DATA_ROOT) / "uploads" / str(corpus.team_id) / str(corpus.pk)


def _store_file(*, corpus: Corpus, sha256: str, ext: str, data: bytes, fsync: bool = True) -> str:
    """Write the original bytes atomically (temp file + rename); returns the path relative to DATA_ROOT."""
    folder = _upload_dir(corpus)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}{ext}"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return str(target.relative_to(Path(settings.DATA_ROOT)))


def _safe_filename(filename: str) -> str:
    return os.path.basename((filename or "").replace("\\", "/")).strip() or "upload"


def _default_title(filename: str) -> str:
    stem = os.path.splitext(filename)[0]
    return stem.replace("_", " ").strip() or "Untitled"


# --------------------------------------------------------------------------- corpora


def corpus_create(
    *,
    team,
    name: str,
    user=None,
    description: str = "",
    embedding_model: str | None = None,
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
    index_type: str = "auto",
) -> Corpus:
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("a corpus needs a name")
    embedding_model = embedding_model or settings.PARSIMONY_DEFAULT_EMBEDDING_MODEL
    _validate_corpus_settings(
        embedding_model=embedding_model, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens, index_type=index_type
    )
    if Corpus.objects.filter(team=team, name=name).exists():
        raise ValidationFailed(f"this team already has a corpus named {name!r}", detail={"name": name})
    try:
        with transaction.atomic():
            return Corpus.objects.create(
                team=team,
                name=name,
                description=description,
                embedding_model=embedding_model,
                chunk_tokens=chunk_tokens,
                overlap_tokens=overlap_tokens,
                index_type=index_type,
                created_by=user if getattr(user, "pk", None) else None,
            )
    except IntegrityError as exc:
        raise ValidationFailed(f"this team already has a corpus named {name!r}", detail={"name": name}) from exc


def corpus_update(
    *,
    corpus: Corpus,
    name: str | None = None,
    description: str | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
    index_type: str | None = None,
    embedding_model: str | None = None,
) -> Corpus:
    """Change a corpus. Chunking changes apply to documents ingested from now on; changing the
    embedding model of a corpus that has chunks is refused (its vectors would not compare)."""
    new = {
        "name": corpus.name if name is None else name.strip(),
        "description": corpus.description if description is None else description,
        "chunk_tokens": corpus.chunk_tokens if chunk_tokens is None else chunk_tokens,
        "overlap_tokens": corpus.overlap_tokens if overlap_tokens is None else overlap_tokens,
        "index_type": corpus.index_type if index_type is None else index_type,
        "embedding_model": corpus.embedding_model if embedding_model is None else embedding_model,
    }
    if not new["name"]:
        raise ValidationFailed("a corpus needs a name")
    _validate_corpus_settings(
        embedding_model=new["embedding_model"],
        chunk_tokens=new["chunk_tokens"],
        overlap_tokens=new["overlap_tokens"],
        index_type=new["index_type"],
    )
    if new["embedding_model"] != corpus.embedding_model and Chunk.objects.filter(document__corpus=corpus).exists():
        raise ValidationFailed("the embedding model of a corpus with documents cannot change; create a new corpus")
    if new["name"] != corpus.name and Corpus.objects.filter(team_id=corpus.team_id, name=new["name"]).exclude(pk=corpus.pk).exists():
        raise ValidationFailed(f"this team already has a corpus named {new['name']!r}")
    for key, value in new.items():
        setattr(corpus, key, value)
    corpus.save()
    return corpus


def corpus_delete(*, corpus: Corpus) -> None:
    """Delete the corpus, its documents, chunks, stored files and index folder."""
    from apps.corpora.indexing import index_dir_remove

    corpus_id, uploads = corpus.pk, _upload_dir(corpus)
    with transaction.atomic():
        corpus.delete()
    index_dir_remove(corpus_id)
    shutil.rmtree(uploads, ignore_errors=True)


# --------------------------------------------------------------------------- uploads


def documents_ingest_start(*, documents: Iterable[Document], user=None) -> list:
    """Start ingestion jobs on the gpu queue (one per INGEST_JOB_DOCUMENTS documents, per corpus)."""
    from apps.core.services import job_start

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
    user=None,
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

    filename = _safe_filename(filename)
    sha256 = hashlib.sha256(data).hexdigest()
    existing = corpus.documents.filter(sha256=sha256).exclude(status=DocumentStatus.FAILED).order_by("pk").first()
    if existing is not None:
        return existing
    ext = os.path.splitext(filename)[1].lower()
    guessed = media_type or mimetypes.guess_type(filename)[0] or ""
    base = {
        "corpus": corpus,
        "title": _default_title(filename),
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
    path = _store_file(corpus=corpus, sha256=sha256, ext=ext, data=data)
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
    user=None,
    start_job: bool = True,
) -> list[Document]:
    """Bulk import: one Document per .jsonl line / .csv row, then batched ingestion jobs.

    A bad record rejects the whole file (ValidationFailed naming the line): nothing is
    created. Records identical to a document already in the corpus (or earlier in the file)
    are skipped. Returns the documents created.
    """
    from workers.ingest.parsers import DocumentParseError, check_size, iter_records

    filename = _safe_filename(filename)
    try:
        check_size(len(data), settings.PARSIMONY_MAX_UPLOAD_BYTES)
        records = list(
            iter_records(filename=filename, data=data, text_field=text_field, title_field=title_field, id_field=id_field)
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
        path = _store_file(corpus=corpus, sha256=sha256, ext=".txt", data=body, fsync=False)
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


# --------------------------------------------------------------------------- ingestion


def _read_original(document: Document) -> bytes:
    if not document.file_path:
        from workers.ingest.parsers import DocumentParseError

        raise DocumentParseError("the original file was not stored")
    try:
        return (Path(settings.DATA_ROOT) / document.file_path).read_bytes()
    except FileNotFoundError as exc:
        from workers.ingest.parsers import DocumentParseError

        raise DocumentParseError("the original file is missing from storage") from exc


def _parse_name(document: Document) -> str:
    """The name whose extension picks the parser: the stored file's (records are stored as .txt)."""
    stored_ext = os.path.splitext(document.file_path)[1].lower()
    if stored_ext and os.path.splitext(document.filename)[1].lower() != stored_ext:
        return document.filename + stored_ext
    return document.filename


def _document_fail(document: Document, message: str) -> None:
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.FAILED, error=message[:10_000])
    document.status, document.error = DocumentStatus.FAILED, message


def _encode_in_slabs(embedder, texts: list[str], progress: ProgressFn | None, *, done_before: int = 0, total: int | None = None):
    import numpy as np

    total = len(texts) if total is None else total
    parts = []
    seconds = 0.0
    for i in range(0, len(texts), EMBED_SLAB):
        started = time.perf_counter()
        parts.append(embedder.encode(texts[i : i + EMBED_SLAB], batch_size=EMBED_BATCH))
        seconds += time.perf_counter() - started
        if progress is not None:
            done = done_before + min(i + EMBED_SLAB, len(texts))
            progress(done, total, f"{done} / {total} chunks embedded")
    vectors = np.vstack(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)
    return vectors, seconds


def _ledger_embed(*, corpus: Corpus, embedder, tokens_by_user: dict[Any, int], seconds: float) -> None:
    from apps.costs.pricing import Usage, to_decimal
    from apps.costs.services import LedgerContext, PriceMissing, price_current, usage_record

    total_tokens = sum(tokens_by_user.values())
    if total_tokens <= 0:
        return
    model_name = _price_name(corpus.embedding_model)
    try:
        price = price_current(model_name=model_name)
    except PriceMissing:
        logger.warning("no price for %s: embedding usage recorded at zero cost", model_name)
        price = None
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    for user, tokens in tokens_by_user.items():
        share = to_decimal(round(seconds * tokens / total_tokens, 6))
        usage_record(
            context=LedgerContext(team=corpus.team, user=user),
            stage="embed",
            model_name=model_name,
            usage=Usage(
                prompt_tokens=tokens,
                gpu_seconds=share if on_gpu else Decimal(0),
                cpu_seconds=Decimal(0) if on_gpu else share,
            ),
            price=price,
            latency_ms=int(1000 * seconds * tokens / total_tokens),
        )


def _chunks_replace(*, documents: list[Document], chunked: dict[int, list]) -> tuple[list[int], dict[int, list[int]]]:
    """Step 3: in one transaction, delete the documents' old chunks and create the new ones.

    Returns (old vector ids, {document id: new vector ids in chunk order}).
    """
    with transaction.atomic():
        doc_ids = [d.pk for d in documents]
        old_ids = [
            int(v)
            for v in Chunk.objects.filter(document_id__in=doc_ids).exclude(vector_id=None).values_list("vector_id", flat=True)
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
        Chunk.objects.filter(document_id__in=doc_ids, vector_id=None).update(vector_id=models_pk())
        new_ids: dict[int, list[int]] = defaultdict(list)
        for doc_id, vector_id in Chunk.objects.filter(document_id__in=doc_ids).order_by("document_id", "ordinal").values_list(
            "document_id", "vector_id"
        ):
            new_ids[doc_id].append(int(vector_id))
    return old_ids, new_ids


def models_pk():
    from django.db.models import F

    return F("pk")


def _bm25_pairs(corpus: Corpus, *, also_documents: Iterable[int] = ()) -> list[tuple[int, str]]:
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


def _index_apply(
    *,
    corpus: Corpus,
    dimension: int,
    remove_ids: list[int],
    add_ids: list[int],
    vectors,
    also_documents: Iterable[int] = (),
) -> None:
    """Step 4: remove then add exactly these ids in FAISS, rebuild BM25 from the DB, save both."""
    from apps.corpora.indexing import (
        DENSE_DIR,
        LoadedIndexes,
        bm25_save_atomic,
        cache_put,
        corpus_index_dir,
        index_stamp,
        load_from_disk,
    )
    from indexes.bm25 import BM25Index
    from indexes.vector_index import VectorIndex, index_file_lock

    folder = corpus_index_dir(corpus.pk)
    with index_file_lock(folder):
        loaded = load_from_disk(corpus.pk)
        vector_index = loaded.vector_index
        if vector_index is None:
            vector_index = VectorIndex(
                dimension=dimension, index_type=corpus.index_type, model=corpus.embedding_model, expected_count=len(add_ids)
            )
        vector_index.remove(list(remove_ids) + list(add_ids))
        if add_ids:
            vector_index.add(add_ids, vectors)
        vector_index.save(folder / DENSE_DIR)
        bm25_index = BM25Index.build(_bm25_pairs(corpus, also_documents=also_documents))
        bm25_save_atomic(bm25_index, corpus.pk)
        cache_put(corpus.pk, LoadedIndexes(stamp=index_stamp(corpus.pk), vector_index=vector_index, bm25_index=bm25_index))


def _documents_mark_ready(*, corpus: Corpus, documents: list[Document], token_counts: dict[int, int], ledger) -> None:
    """Step 5: the documents become searchable, and the embedding is billed, in one transaction."""
    with transaction.atomic():
        for document in documents:
            fields = {"status": DocumentStatus.READY, "error": "", "token_count": token_counts[document.pk]}
            fields.update({"title": document.title, "media_type": document.media_type})
            Document.objects.filter(pk=document.pk).update(**fields)
            document.status, document.error, document.token_count = DocumentStatus.READY, "", token_counts[document.pk]
        ledger()


def documents_ingest(*, documents: Iterable[Document], progress: ProgressFn | None = None) -> dict[str, Any]:
    """Parse, chunk, embed and index documents (steps 1-5 of the module docstring).

    Idempotent: ready and failed documents are skipped; queued or processing ones (a crashed
    earlier attempt) are done again from the start. Returns counts for the Job result.
    """
    documents = [d for d in documents if d.status in (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)]
    result = {"documents": 0, "ready": 0, "failed": 0, "chunks": 0, "tokens": 0}
    by_corpus: dict[int, list[Document]] = defaultdict(list)
    for document in documents:
        by_corpus[document.corpus_id].append(document)
    done_before = 0
    for docs in by_corpus.values():
        part = _ingest_corpus_batch(docs, progress, done_before)
        done_before += part["chunks"]
        for key in result:
            result[key] += part[key]
    return result


def _ingest_corpus_batch(documents: list[Document], progress: ProgressFn | None, done_before: int) -> dict[str, Any]:
    from workers.ingest.chunking import chunk_text
    from workers.ingest.parsers import DocumentParseError, parse_document

    corpus = Corpus.objects.select_related("team").get(pk=documents[0].corpus_id)
    Document.objects.filter(pk__in=[d.pk for d in documents]).update(status=DocumentStatus.PROCESSING, error="")
    embedder = _embedder(corpus.embedding_model)
    result = {"documents": len(documents), "ready": 0, "failed": 0, "chunks": 0, "tokens": 0}

    chunked: dict[int, list] = {}
    ok: list[Document] = []
    for document in documents:
        document.status = DocumentStatus.PROCESSING
        try:
            parsed = parse_document(filename=_parse_name(document), data=_read_original(document), media_type=document.media_type or None)
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
            result["failed"] += 1
            continue
        if not document.title or document.title == _default_title(document.filename):
            document.title = parsed.title[:500]
        document.media_type = parsed.media_type
        chunked[document.pk] = pieces
        ok.append(document)

    texts = [piece.text for document in ok for piece in chunked[document.pk]]
    total = done_before + len(texts)
    if progress is not None:
        progress(done_before, total, f"embedding {len(texts)} chunks of {len(ok)} documents")
    vectors, seconds = _encode_in_slabs(embedder, texts, progress, done_before=done_before, total=total)

    if ok:
        old_ids, new_ids = _chunks_replace(documents=ok, chunked=chunked)
        add_ids = [vector_id for document in ok for vector_id in new_ids[document.pk]]
        assert len(add_ids) == len(vectors), (len(add_ids), len(vectors))
        _index_apply(
            corpus=corpus,
            dimension=embedder.dimension,
            remove_ids=old_ids,
            add_ids=add_ids,
            vectors=vectors,
            also_documents=[d.pk for d in ok],
        )
        token_counts = {d.pk: sum(p.token_count for p in chunked[d.pk]) for d in ok}
        tokens_by_user: dict[Any, int] = defaultdict(int)
        uploaders = {d.pk: d.uploaded_by for d in Document.objects.filter(pk__in=token_counts).select_related("uploaded_by")}
        for doc_id, tokens in token_counts.items():
            tokens_by_user[uploaders[doc_id]] += tokens
        _documents_mark_ready(
            corpus=corpus,
            documents=ok,
            token_counts=token_counts,
            ledger=lambda: _ledger_embed(corpus=corpus, embedder=embedder, tokens_by_user=tokens_by_user, seconds=seconds),
        )
        result["ready"] = len(ok)
        result["chunks"] = len(add_ids)
        result["tokens"] = sum(token_counts.values())
    return result


def document_ingest(*, document: Document, progress: ProgressFn | None = None) -> Document:
    """Ingest one document in-process (what the task does for each document of its job)."""
    documents_ingest(documents=[document], progress=progress)
    document.refresh_from_db()
    return document


# --------------------------------------------------------------------------- deletes and rebuilds


def document_delete(*, document: Document) -> None:
    """Delete a document: its chunks, its vectors in FAISS, its stored file; BM25 is rebuilt."""
    from apps.corpora.indexing import corpus_index_dir, index_stamp

    corpus = Corpus.objects.select_related("team").get(pk=document.corpus_id)
    vector_ids = [int(v) for v in document.chunks.exclude(vector_id=None).values_list("vector_id", flat=True)]
    file_path = document.file_path
    with transaction.atomic():
        document.delete()
    if file_path and not Document.objects.filter(corpus=corpus, file_path=file_path).exists():
        (Path(settings.DATA_ROOT) / file_path).unlink(missing_ok=True)
    stamp = index_stamp(corpus.pk)
    if stamp[0] is not None:
        _index_apply(corpus=corpus, dimension=0, remove_ids=vector_ids, add_ids=[], vectors=None)
    elif stamp[1] is not None or corpus_index_dir(corpus.pk).exists():
        _bm25_only_rebuild(corpus)


def _bm25_only_rebuild(corpus: Corpus) -> None:
    from apps.corpora.indexing import bm25_save_atomic, cache_forget, corpus_index_dir
    from indexes.bm25 import BM25Index
    from indexes.vector_index import index_file_lock

    with index_file_lock(corpus_index_dir(corpus.pk)):
        bm25_save_atomic(BM25Index.build(_bm25_pairs(corpus)), corpus.pk)
    cache_forget(corpus.pk)


def corpus_index_rebuild(*, corpus: Corpus, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Rebuild FAISS and BM25 from the database (chunks of ready documents), re-embedding the texts.

    The new index type is resolved by size ("auto"); both are saved atomically and swapped in.
    """
    from apps.corpora.indexing import (
        DENSE_DIR,
        LoadedIndexes,
        bm25_save_atomic,
        cache_put,
        corpus_index_dir,
        index_stamp,
    )
    from indexes.bm25 import BM25Index
    from indexes.vector_index import VectorIndex, index_file_lock

    corpus = Corpus.objects.select_related("team").get(pk=corpus.pk)
    embedder = _embedder(corpus.embedding_model)
    rows = list(
        Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
        .exclude(vector_id=None)
        .order_by("vector_id")
        .values_list("vector_id", "text", "token_count")
    )
    ids = [int(r[0]) for r in rows]
    texts = [r[1] for r in rows]
    vectors, seconds = _encode_in_slabs(embedder, texts, progress)
    vector_index = VectorIndex(
        dimension=embedder.dimension, index_type=corpus.index_type, model=corpus.embedding_model, expected_count=len(ids)
    )
    if ids:
        vector_index.add(ids, vectors)
    folder = corpus_index_dir(corpus.pk)
    with index_file_lock(folder):
        # Documents ingested or deleted while we were embedding: reconcile under the lock.
        current = dict(
            Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY)
            .exclude(vector_id=None)
            .values_list("vector_id", "text")
        )
        vector_index.remove([i for i in ids if i not in current])
        late = sorted(set(current) - set(ids))
        if late:
            late_vectors, late_seconds = _encode_in_slabs(embedder, [current[i] for i in late], None)
            vector_index.add(late, late_vectors)
            seconds += late_seconds
        bm25_index = BM25Index.build(sorted(current.items()))
        vector_index.save(folder / DENSE_DIR)
        bm25_save_atomic(bm25_index, corpus.pk)
        cache_put(corpus.pk, LoadedIndexes(stamp=index_stamp(corpus.pk), vector_index=vector_index, bm25_index=bm25_index))
    with transaction.atomic():
        _ledger_embed(corpus=corpus, embedder=embedder, tokens_by_user={None: sum(r[2] for r in rows)}, seconds=seconds)
    return {"chunks": vector_index.count, "index_type": vector_index.index_type, "encode_seconds": round(seconds, 3)}


def corpus_index_rebuild_start(*, corpus: Corpus, user=None):
    """Rebuild the corpus's indexes in a background job on the gpu queue."""
    from apps.core.services import job_start

    return job_start(kind=REBUILD_KIND, team=corpus.team, created_by=user, params={"corpus_id": corpus.pk})
