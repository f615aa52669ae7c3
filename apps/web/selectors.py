"""Reads the browser pages need beyond the apps' own selectors (always team-scoped)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from apps.core.models import FINISHED_STATUSES, Job
from apps.core.scoping import team_object_or_404, team_scoped
from apps.corpora.models import Chunk, Corpus, Document, DocumentStatus
from apps.rag.models import QueryRun, QueryStatus

INGEST_KIND = "corpora.ingest"
ACTIVE_DOCUMENT_STATUSES = (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)


@dataclass
class DocumentRow:
    document: Document
    job: Job | None

    @property
    def active(self) -> bool:
        return self.document.status in ACTIVE_DOCUMENT_STATUSES

    @property
    def percent(self) -> int:
        if self.document.status == DocumentStatus.READY:
            return 100
        if self.job is None or not self.active:
            return 0
        # The job embeds the chunks of all its documents: its share is this document's best guess.
        return min(99, self.job.progress_percent)

    @property
    def message(self) -> str:
        if not self.active:
            return ""
        if self.job is None or self.job.status == "queued":
            return "waiting for a worker"
        return self.job.message or "starting"


def corpus_list_with_counts(*, team):
    return team_scoped(Corpus, team).annotate(
        n_documents=Count("documents", distinct=True),
        n_ready=Count("documents", filter=Q(documents__status=DocumentStatus.READY), distinct=True),
        n_active=Count("documents", filter=Q(documents__status__in=ACTIVE_DOCUMENT_STATUSES), distinct=True),
        n_failed=Count("documents", filter=Q(documents__status=DocumentStatus.FAILED), distinct=True),
    ).order_by("name", "id")


def document_rows(*, corpus: Corpus, limit: int = 200) -> list[DocumentRow]:
    """The corpus's documents, newest first, each with the ingestion job that carries it (if running)."""
    newest_first = corpus.documents.annotate(n_chunks=Count("chunks")).order_by("-created_at", "-id")
    documents = list(newest_first.select_related("uploaded_by")[:limit])
    active_ids = {d.pk for d in documents if d.status in ACTIVE_DOCUMENT_STATUSES}
    job_by_document: dict[int, Job] = {}
    if active_ids:
        # Key lookups on JSON work on PostgreSQL and SQLite alike; membership is checked here.
        ingest_jobs = team_scoped(Job, corpus.team_id).filter(kind=INGEST_KIND, params__corpus_id=corpus.pk)
        jobs = ingest_jobs.order_by("-id")[:50]
        for job in jobs:
            for document_id in job.params.get("document_ids", []):
                if document_id in active_ids and document_id not in job_by_document:
                    job_by_document[document_id] = job
    return [DocumentRow(document=d, job=job_by_document.get(d.pk)) for d in documents]


def corpus_is_ingesting(*, corpus: Corpus) -> bool:
    return corpus.documents.filter(status__in=ACTIVE_DOCUMENT_STATUSES).exists()


def document_get(*, team, document_id: int) -> Document:
    return team_object_or_404(Document.objects.select_related("corpus", "uploaded_by"), team, pk=document_id)


def document_chunks(*, document: Document):
    return team_scoped(Chunk, document.corpus.team_id).filter(document=document).order_by("ordinal")


def ingest_jobs_running(*, corpus: Corpus) -> bool:
    return (
        team_scoped(Job, corpus.team_id)
        .filter(kind=INGEST_KIND, params__corpus_id=corpus.pk)
        .exclude(status__in=FINISHED_STATUSES)
        .exists()
    )


def savings_totals(*, team, since=None) -> dict:
    """Totals over the team's finished query runs: what compression and caching saved."""
    runs = team_scoped(QueryRun, team).filter(status=QueryStatus.SUCCEEDED)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    totals = runs.aggregate(
        runs=Count("id"),
        cost=Sum("cost"),
        baseline_cost=Sum("baseline_cost"),
        savings=Sum("savings"),
        context_before=Coalesce(Sum("context_tokens_before"), 0),
        context_after=Coalesce(Sum("context_tokens_after"), 0),
        prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
        cached_tokens=Coalesce(Sum("cached_tokens"), 0),
    )
    before, after = totals["context_before"], totals["context_after"]
    totals["context_saved"] = max(0, before - after)
    totals["context_saved_percent"] = round(100 * (before - after) / before, 1) if before else 0.0
    prompt = totals["prompt_tokens"]
    totals["cached_percent"] = round(100 * totals["cached_tokens"] / prompt, 1) if prompt else 0.0
    baseline = totals["baseline_cost"] or 0
    savings = totals["savings"] or 0
    totals["savings_percent"] = round(float(100 * savings / baseline), 1) if baseline else 0.0
    return totals
