"""Corpus ingestion and index rebuild jobs: thin, idempotent. Ingestion parses on `cpu` and embeds on
`gpu` (one Job, continued from stage to stage); a rebuild embeds on `gpu`."""

from __future__ import annotations

from apps.core.jobs import JobContinue
from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="corpora.ingest", queue=Queue.CPU)
def ingest_documents(job: Job, progress: Progress) -> dict | JobContinue:
    """Ingest the documents named in ``job.params["document_ids"]``, one stage per run: parse and chunk
    here on `cpu`, then embed and index on `gpu`, one group of documents per turn (the job continues
    itself: ``apps.corpora.services.ingestion.ingest_job_run``).

    Ready and failed documents are skipped, so a redelivered stage does no work twice; documents left
    ``processing`` by a killed worker are redone from the start of their stage.
    """
    from apps.corpora.services.ingestion import ingest_job_run

    return ingest_job_run(job=job, progress=progress, attempt=progress.attempt)


@job_task(kind="corpora.rebuild_index", queue=Queue.GPU)
def rebuild_index(job: Job, progress: Progress) -> dict:
    """Rebuild a corpus's FAISS and BM25 indexes from the database."""
    from apps.corpora.services import corpus_index_rebuild_by_id

    return corpus_index_rebuild_by_id(
        corpus_id=job.params.get("corpus_id"), progress=progress, reservation_id=job.params.get("reservation_id")
    )
