"""Corpus ingestion and index rebuild jobs: thin, idempotent, on the `gpu` queue (model work)."""

from __future__ import annotations

from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="corpora.ingest", queue=Queue.GPU)
def ingest_documents(job: Job, progress: Progress) -> dict:
    """Ingest the documents named in ``job.params["document_ids"]``.

    Ready and failed documents are skipped, so a redelivered job does no work twice;
    documents left ``processing`` by a killed worker are redone from the start.
    """
    from apps.corpora.services import documents_ingest_by_ids

    return documents_ingest_by_ids(
        document_ids=job.params.get("document_ids", []),
        progress=progress,
        reservation_id=job.params.get("reservation_id"),
    )


@job_task(kind="corpora.rebuild_index", queue=Queue.GPU)
def rebuild_index(job: Job, progress: Progress) -> dict:
    """Rebuild a corpus's FAISS and BM25 indexes from the database."""
    from apps.corpora.services import corpus_index_rebuild_by_id

    return corpus_index_rebuild_by_id(
        corpus_id=job.params.get("corpus_id"), progress=progress, reservation_id=job.params.get("reservation_id")
    )
