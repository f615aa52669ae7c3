"""Ingestion: parse, chunk, embed and index a batch of documents (one Job may carry many).

  1. parse + chunk each document (a failure marks that document failed, nothing else);
  2. embed every chunk of the batch, in slabs, reporting ``chunks embedded / total``;
  3. one DB transaction replaces the documents' chunks (old ones deleted, new ones
     created, ``vector_id`` = chunk pk); documents stay ``processing``;
  4. under the index lock: remove the old and new ids from FAISS, add exactly the new
     ids, save atomically; rebuild BM25 from the DB; save atomically (``index_apply``);
  5. one DB transaction marks the documents ready and writes the embedding ledger row.
In-process (``documents_ingest``: ``manage.py ingest``, the seeders) the steps run in one go; an
ingestion job runs them in stages on two queues, parse on ``cpu`` and embed on ``gpu`` one group of
documents per turn (``ingest_job_run``, below). A worker killed anywhere in between leaves the documents
``processing``; searches only
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
from collections.abc import Iterable
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
    corpus: Corpus, documents: list[Document], tokenizer: Any, max_tokens: int
) -> tuple[list[Document], dict[int, list]]:
    """Step 1: the documents that parsed into at least one chunk, and their chunks; others fail.
    ``tokenizer``, ``max_tokens``: the embedding model's (``_chunker``), so chunks fit what it reads."""
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
                tokenizer=tokenizer,
                chunk_tokens=corpus.chunk_tokens,
                overlap_tokens=corpus.overlap_tokens,
                max_tokens=max_tokens,
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


def _tokens_by_uploader(token_counts: dict[int, int]) -> dict[Any, int]:
    """{uploader: embedded tokens} of the documents in ``token_counts`` ({document id: tokens}): the
    embedding's ledger row is split by who uploaded what."""
    tokens_by_user: dict[Any, int] = defaultdict(int)
    uploaders = {
        d.pk: d.uploaded_by for d in Document.objects.filter(pk__in=token_counts).select_related("uploaded_by")
    }
    for doc_id, tokens in token_counts.items():
        tokens_by_user[uploaders[doc_id]] += tokens
    return tokens_by_user


def _documents_mark_ready(
    *, corpus: Corpus, documents: list[Document], token_counts: dict[int, int], embedder: Any, seconds: float,
    hold: Any,
) -> None:
    """Step 5: the documents become searchable, and the embedding is billed (split by uploader, under
    ``hold``), in one transaction. A document missing from ``token_counts`` embedded nothing."""
    tokens_by_user = _tokens_by_uploader(token_counts)
    with transaction.atomic():
        for document in documents:
            tokens = token_counts.get(document.pk, 0)
            fields = {"status": DocumentStatus.READY, "error": "", "token_count": tokens}
            fields.update({"title": document.title, "media_type": document.media_type})
            Document.objects.filter(pk=document.pk).update(**fields)
            document.status, document.error, document.token_count = DocumentStatus.READY, "", tokens
        embedding_usage_record(
            corpus=corpus, embedder=embedder, tokens_by_user=tokens_by_user, seconds=seconds,
            reservation=hold.reservation, api_key=hold.context.api_key,
        )


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
    ok, chunked = _parse_and_chunk(corpus, documents, embedder.tokenizer, embedder.max_chunk_tokens)
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
    _documents_mark_ready(
        corpus=corpus, documents=ok, token_counts=token_counts, embedder=embedder, seconds=seconds, hold=hold
    )
    result.update(ready=len(ok), chunks=len(add_ids), tokens=sum(token_counts.values()))
    return result


# --------------------------------------------------------------------------- the ingestion job, in stages
#
# One Job row, two stages on two queues, so a big parse never holds the gpu queue and a long embedding
# yields it between groups (docs/reliability.md, "Fairness and queues"):
#
#   parse (cpu): steps 1 and 3 for every unfinished document of the job: parse, chunk (with the
#     embedding model's tokenizer, loaded without its weights), make the hold cover the chunks as the
#     groups will embed them, and replace the documents' chunks in the database (documents stay
#     ``processing``; the vector ids of chunks replaced are kept in the job's params, in the same
#     transaction, so the first group removes them from FAISS). Continues on gpu.
#   embed (gpu), one group at a time: the next documents of the job, in id order, until they hold at
#     least PARSIMONY_INGEST_EMBED_GROUP_CHUNKS chunks: steps 2, 4 and 5 (embed their chunks, apply the
#     exact ids to the indexes, mark them ready and bill them under the hold). While documents remain,
#     the job continues on gpu: queued again behind whatever arrived meanwhile (another team's query).
#     The last group settles the hold.
#
# Each stage is redone from its start by a redelivery: a parse again replaces the chunks (removing its
# own earlier ones with the rest), and a group's documents are the next unfinished ones with their
# chunks in the database (a group killed after its index write removes and adds the same ids again).

INGEST_STAGE = "stage"
STAGE_PARSE = "parse"
STAGE_EMBED = "embed"
STALE_VECTOR_IDS = "stale_vector_ids"


def _chunker(model_name: str) -> tuple[Any, int]:
    """The embedding model's tokenizer (no weights) and the tokens a chunk may hold, as the embedder's."""
    from apps.costs.tokens import embedding_tokenizer

    tokenizer = embedding_tokenizer(model_name)
    return tokenizer, int(tokenizer.model_max_length) - int(tokenizer.num_special_tokens_to_add(False))


def _embed_groups(documents: list[Document], chunk_counts: dict[int, int], group_chunks: int) -> list[list[Document]]:
    """``documents`` (in id order) cut into groups of whole documents, each closed once it holds at least
    ``group_chunks`` chunks: the groups a job embeds, one per gpu turn. The same cut of any suffix of
    the documents gives the same groups, so a redelivered group is the group it was."""
    groups: list[list[Document]] = []
    current: list[Document] = []
    held = 0
    for document in documents:
        current.append(document)
        held += chunk_counts.get(document.pk, 0)
        if held >= group_chunks:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


def _job_hold(params: dict[str, Any]) -> Hold | None:
    reservation_id = params.get("reservation_id")
    if reservation_id is None:
        return None
    from apps.costs.models import Reservation

    reservation = Reservation.objects.select_related("team", "user", "api_key").get(pk=reservation_id)
    context = LedgerContext(team=reservation.team, user=reservation.user, api_key=reservation.api_key)
    return hold_resume(reservation=reservation, context=context, path="ingest")


def _job_documents(params: dict[str, Any]) -> tuple[list[Document], int]:
    """The job's unfinished documents (queued, or processing under an earlier attempt), by id; and how
    many of its documents were deleted."""
    ids = [int(i) for i in params.get("document_ids", [])]
    present = list(Document.objects.filter(pk__in=ids).select_related("corpus__team").order_by("pk"))
    unfinished = [d for d in present if d.status in (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)]
    return unfinished, len(ids) - len(present)


def _job_result(params: dict[str, Any]) -> dict[str, Any]:
    """The job's outcome, counted from its documents' rows (whatever stage or attempt did the work)."""
    from django.db.models import Count, Q, Sum

    ids = [int(i) for i in params.get("document_ids", [])]
    documents = Document.objects.filter(pk__in=ids)
    counts = documents.aggregate(
        documents=Count("pk"),
        ready=Count("pk", filter=Q(status=DocumentStatus.READY)),
        failed=Count("pk", filter=Q(status=DocumentStatus.FAILED)),
        tokens=Sum("token_count", filter=Q(status=DocumentStatus.READY)),
    )
    chunks = Chunk.objects.filter(document__in=documents, document__status=DocumentStatus.READY).count()
    return {
        "documents": counts["documents"], "ready": counts["ready"], "failed": counts["failed"],
        "chunks": chunks, "tokens": counts["tokens"] or 0, "missing": len(ids) - counts["documents"],
    }


def _finish(params: dict[str, Any], hold: Hold | None) -> dict[str, Any]:
    if hold is not None:
        hold.settle()
    return _job_result(params)


def _group_bound(corpus: Corpus, groups: list[list[Document]], chunked: dict[int, list]) -> Decimal:
    """The bound of embedding these groups as the embed stage will: each group its own encode calls."""
    from apps.corpora.services.embedding import calls_bound, embeds_in_this_process, texts_calls

    calls = [
        call
        for group in groups
        for call in texts_calls(corpus.embedding_model, [p.text for d in group for p in chunked[d.pk]])
    ]
    return calls_bound(model_name=corpus.embedding_model, calls=calls, here=embeds_in_this_process(job=True))


def ingest_job_run(*, job: Any, progress: ProgressFn, attempt: int | None = None) -> Any:
    """One stage of an ingestion job (the task ``corpora.ingest``): a result dict when the job is done,
    else a ``JobContinue`` naming the queue of its next stage."""
    params = dict(job.params or {})
    if params.get(INGEST_STAGE, STAGE_PARSE) == STAGE_PARSE:
        return _job_parse(job_id=job.pk, params=params, progress=progress, attempt=attempt)
    return _job_embed_group(params=params, progress=progress)


def _job_parse(*, job_id: int, params: dict[str, Any], progress: ProgressFn, attempt: int | None) -> Any:
    from django.conf import settings

    from apps.core.jobs import JobContinue
    from apps.core.services import job_params_update

    documents, _ = _job_documents(params)
    hold = _job_hold(params)
    stale = [int(i) for i in params.get(STALE_VECTOR_IDS, [])]
    by_corpus: dict[int, list[Document]] = defaultdict(list)
    for document in documents:
        by_corpus[document.corpus_id].append(document)
    parsed: list[tuple[Corpus, list[Document], dict[int, list]]] = []
    progress(0, len(documents), f"parsing {len(documents)} documents")
    for docs in by_corpus.values():
        corpus = docs[0].corpus
        Document.objects.filter(pk__in=[d.pk for d in docs]).update(status=DocumentStatus.PROCESSING, error="")
        tokenizer, max_tokens = _chunker(corpus.embedding_model)
        ok, chunked = _parse_and_chunk(corpus, docs, tokenizer, max_tokens)
        if ok:
            parsed.append((corpus, ok, chunked))
        progress(sum(len(d) for _, d, _ in parsed), len(documents), "parsed")
    group_chunks = settings.PARSIMONY_INGEST_EMBED_GROUP_CHUNKS
    try:
        if hold is not None and parsed:
            counts = [{d.pk: len(chunked[d.pk]) for d in ok} for _, ok, chunked in parsed]
            hold.ensure(sum(
                (_group_bound(corpus, _embed_groups(ok, count, group_chunks), chunked)
                 for (corpus, ok, chunked), count in zip(parsed, counts, strict=True)),
                Decimal(0),
            ))
    except ServiceError as exc:  # a budget refused the chunks made: none is embedded
        for _, ok, _ in parsed:
            for document in ok:
                _document_fail(document, exc.message)
        return _finish(params, hold)
    chunks = 0
    for _, ok, chunked in parsed:
        with transaction.atomic():
            old_ids, _ = _chunks_replace(documents=ok, chunked=chunked)
            stale = sorted(set(stale) | set(old_ids))
            # What parsing found: the documents' titles and token counts (they stay processing).
            for document in ok:
                Document.objects.filter(pk=document.pk).update(
                    title=document.title, media_type=document.media_type,
                    token_count=sum(p.token_count for p in chunked[document.pk]),
                )
            # A redelivered parse deletes these chunks again: the ids they had in FAISS must not be lost.
            job_params_update(job_id=job_id, attempt=attempt, **{STALE_VECTOR_IDS: stale})
        chunks += sum(len(chunked[d.pk]) for d in ok)
    if not parsed:
        return _finish(params, hold)
    ready = sum(len(ok) for _, ok, _ in parsed)
    return JobContinue(
        queue="gpu",
        params={**params, INGEST_STAGE: STAGE_EMBED, STALE_VECTOR_IDS: stale},
        message=f"parsed {ready} documents into {chunks} chunks; waiting for the gpu queue",
    )


def _job_embed_group(*, params: dict[str, Any], progress: ProgressFn) -> Any:
    from django.conf import settings
    from django.db.models import Count

    from apps.core.jobs import JobContinue
    from apps.corpora.services.index_build import index_apply as apply_ids

    documents, _ = _job_documents(params)
    hold = _job_hold(params)
    if not documents:
        return _finish(params, hold)
    corpus = documents[0].corpus
    documents = [d for d in documents if d.corpus_id == corpus.pk]
    chunk_counts = dict(
        Chunk.objects.filter(document__in=documents).order_by().values_list("document_id").annotate(n=Count("pk"))
    )
    groups = _embed_groups(documents, chunk_counts, settings.PARSIMONY_INGEST_EMBED_GROUP_CHUNKS)
    group = groups[0]
    rows = list(
        Chunk.objects.filter(document__in=group).order_by("document_id", "ordinal")
        .values_list("document_id", "vector_id", "text", "token_count")
    )
    if hold is None:  # an ingestion job always has a hold; one made without is billed under its own
        hold = _batch_hold_open(corpus, texts_bound(model_name=corpus.embedding_model,
                                                    texts=[r[2] for r in rows], here=True), group)
        params = {**params, "reservation_id": hold.reservation.pk}
    job_ids = [int(i) for i in params.get("document_ids", [])]
    total = Chunk.objects.filter(document_id__in=job_ids, document__corpus=corpus).count()  # ready + pending
    pending = sum(chunk_counts.values())
    done_before = total - pending
    texts = [text for _, _, text, _ in rows]
    progress(done_before, total,
             f"embedding {len(texts)} chunks of {len(group)} documents ({len(groups)} groups left)")
    embedder = embedder_for(corpus.embedding_model)
    vectors, seconds = encode_in_slabs(embedder, texts, progress, done_before=done_before, total=total)
    add_ids = [int(vector_id) for _, vector_id, _, _ in rows]
    stale = [int(i) for i in params.get(STALE_VECTOR_IDS, [])]
    apply_ids(
        corpus=corpus, dimension=embedder.dimension, remove_ids=sorted(set(stale) | set(add_ids)),
        add_ids=add_ids, vectors=vectors, also_documents=[d.pk for d in group],
    )
    token_counts: dict[int, int] = defaultdict(int)
    for document_id, _, _, tokens in rows:
        token_counts[document_id] += int(tokens)
    _documents_mark_ready(
        corpus=corpus, documents=group, token_counts=dict(token_counts), embedder=embedder, seconds=seconds,
        hold=hold,
    )
    left, _ = _job_documents(params)
    if left:  # the next group waits its turn behind the jobs queued meanwhile
        _hold_keep(hold)
        return JobContinue(
            queue="gpu", params=params,
            message=f"{done_before + len(texts)} / {total} chunks embedded; {len(left)} documents wait their turn",
        )
    return _finish(params, hold)


def _hold_keep(hold: Hold) -> None:
    """Between two groups the job waits in the queue without a heartbeat: its hold must not expire there."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.corpora.services.documents import INGEST_HOLD_TTL_S
    from apps.costs.models import Reservation, ReservationStatus

    until = timezone.now() + timedelta(seconds=INGEST_HOLD_TTL_S)
    Reservation.objects.filter(pk=hold.reservation.pk, status=ReservationStatus.HELD, expires_at__lt=until).update(
        expires_at=until
    )
