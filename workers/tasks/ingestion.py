"""Corpus ingestion and index rebuild jobs: thin, idempotent, on the `gpu` queue (model work)."""

from __future__ import annotations

import logging

from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task

logger = logging.getLogger(__name__)


@job_task(kind="corpora.ingest", queue=Queue.GPU)
def ingest_documents(job: Job, progress: Progress) -> dict:
    """Ingest the documents named in ``job.params["document_ids"]``.

    Ready and failed documents are skipped, so a redelivered job does no work twice;
    documents left ``processing`` by a killed worker are redone from the start.
    """
    from apps.corpora.models import Document
    from apps.corpora.services import documents_ingest

    ids = [int(i) for i in job.params.get("document_ids", [])]
    documents = list(Document.objects.filter(pk__in=ids).order_by("pk"))
    missing = len(ids) - len(documents)
    if missing:
        logger.info("job %s: %d document(s) were deleted before ingestion", job.pk, missing)
    result = documents_ingest(documents=documents, progress=progress)
    result["missing"] = missing
    return result


@job_task(kind="corpora.rebuild_index", queue=Queue.GPU)
def rebuild_index(job: Job, progress: Progress) -> dict:
    """Rebuild a corpus's FAISS and BM25 indexes from the database."""
    from apps.corpora.models import Corpus
    from apps.corpora.services import corpus_index_rebuild

    corpus = Corpus.objects.filter(pk=job.params.get("corpus_id")).first()
    if corpus is None:
        logger.warning("job %s: corpus %s no longer exists", job.pk, job.params.get("corpus_id"))
        return {"chunks": 0, "missing": True}
    return corpus_index_rebuild(corpus=corpus, progress=progress)
