"""An ingestion is one Job in stages (apps/corpora/services/ingestion.py): parse and chunk on `cpu`, then embed
and index on `gpu` one group of documents per turn, queued again behind other work between groups; each
stage is redone from its start by a redelivery, leaving each chunk, vector and ledger row once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core import dispatch
from apps.core import services as core_services
from apps.core.models import Job, JobStatus
from apps.core.services import jobs_reap
from apps.corpora.models import Chunk, Document, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services import document_upload, documents_import_records
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from tests.apps.corpora.conftest import ZEBRA

pytestmark = pytest.mark.django_db

FACTS = [f"Fact {i}: the river number {i} flows north past {i} towns and {i + 3} bridges." for i in range(7)]


class WorkerKilled(BaseException):
    """What the worker's process sees of a SIGKILL: nothing after this point runs."""


class _Sent:
    def __init__(self) -> None:
        self.queues: list[str] = []

    def send_task(self, name: str, *, args: tuple, queue: str) -> None:
        self.queues.append(queue)


def _vector_ids(corpus) -> set[int]:
    return {int(i) for i in corpus_index_store().load(corpus.pk).vector_index.ids()}


def test_an_ingestion_parses_on_cpu_then_embeds_on_gpu_one_group_per_turn(
    corpus, alice, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from workers.tasks.ingestion import ingest_documents

    settings.PARSIMONY_INGEST_EMBED_GROUP_CHUNKS = 3  # one chunk per fact: groups of 3, 3 and 1 documents
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/99"  # sends are recorded, each turn run here
    sent = _Sent()
    monkeypatch.setattr(dispatch, "celery_app", lambda: sent)
    records = "\n".join(json.dumps({"text": fact}) for fact in FACTS).encode()
    with django_capture_on_commit_callbacks(execute=True):
        documents = documents_import_records(corpus=corpus, filename="facts.jsonl", data=records, user=alice)
    job = Job.objects.get(kind="corpora.ingest")
    assert (job.queue, sent.queues) == ("cpu", ["cpu"])

    ready_after_each_turn = []
    for _ in range(4):
        with django_capture_on_commit_callbacks(execute=True):
            ingest_documents.run_job(job.pk)
        ready_after_each_turn.append(corpus.documents.filter(status=DocumentStatus.READY).count())
    job.refresh_from_db()
    assert sent.queues == ["cpu", "gpu", "gpu", "gpu"]  # parse, then three embed turns, each sent anew
    assert ready_after_each_turn == [0, 3, 6, 7]
    assert (job.status, job.queue, job.attempts) == (JobStatus.SUCCEEDED, "gpu", 4)
    assert job.result == {"documents": 7, "ready": 7, "failed": 0, "chunks": 7, "tokens": job.result["tokens"],
                          "missing": 0}
    assert _vector_ids(corpus) == set(Chunk.objects.values_list("vector_id", flat=True))
    assert Chunk.objects.count() == len(documents) == 7
    reservation = Reservation.objects.get(pk=job.params["reservation_id"])
    assert UsageRecord.objects.filter(reservation=reservation).count() == 3  # one row per group
    assert reservation.status == ReservationStatus.SETTLED and 0 < reservation.actual <= reservation.estimate
    assert ledger_reconcile() == []


def test_a_parse_killed_after_replacing_chunks_is_redone_and_the_replaced_vectors_leave_the_index(
    corpus, alice, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from workers.tasks.ingestion import ingest_documents

    with django_capture_on_commit_callbacks(execute=True):
        document = document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice)
    first = set(Chunk.objects.filter(document=document).values_list("vector_id", flat=True))
    assert document.refresh_from_db() or document.status == DocumentStatus.READY
    assert _vector_ids(corpus) == first
    # Its ingestion failed later on (say): the same upload ingests it again, in a new job.
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.FAILED, error="boom")
    with django_capture_on_commit_callbacks(execute=False):
        document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice)
    job = Job.objects.filter(kind="corpora.ingest").order_by("-pk").first()

    def killed(**kwargs):
        raise WorkerKilled

    with monkeypatch.context() as patch:
        patch.setattr(core_services, "job_continue", killed)  # dies once its chunks are replaced
        with pytest.raises(WorkerKilled):
            ingest_documents.run_job(job.pk)
    assert not Chunk.objects.filter(vector_id__in=first).exists()  # replaced: their ids only in the params
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_reap() == {"redelivered": 1, "failed": 0}

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 3)  # parse killed, parse, embed
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.READY
    now = set(Chunk.objects.filter(document=document).values_list("vector_id", flat=True))
    assert now and not now & first
    assert _vector_ids(corpus) == now  # the first ingestion's vectors are gone, the second's there once
    assert corpus_index_store().for_search(corpus.pk).bm25_index.count == len(now)
    assert ledger_reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_the_embedded_default_runs_both_stages_on_its_background_threads(corpus, alice, settings):
    import time

    settings.PARSIMONY_INPROCESS_SYNC = False  # no broker: one background thread per queue, as `make run` does
    document = document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice)
    job = Job.objects.get(kind="corpora.ingest")
    deadline = time.monotonic() + 120
    while not Job.objects.filter(pk=job.pk, status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED]).exists():
        assert time.monotonic() < deadline, Job.objects.get(pk=job.pk).message
        time.sleep(0.1)
    job.refresh_from_db()
    assert (job.status, job.queue, job.attempts) == (JobStatus.SUCCEEDED, "gpu", 2), job.error
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.READY
    assert _vector_ids(corpus) == set(Chunk.objects.values_list("vector_id", flat=True))
    _close_background_connections()


def _close_background_connections() -> None:
    """The background threads keep their database connections: close them, so the test database can go."""
    from django.db import connections

    for executor in list(dispatch._executors.values()):
        executor.submit(connections.close_all).result(timeout=30)


def test_an_ingestion_cancelled_during_its_parse_is_not_continued_and_its_hold_is_released(
    corpus, alice, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.core.services import job_cancel
    from apps.corpora.services import ingestion
    from workers.tasks.ingestion import ingest_documents

    with django_capture_on_commit_callbacks(execute=False):
        document = document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice)
    job = Job.objects.get(kind="corpora.ingest")
    real = ingestion._chunks_replace

    def cancelled_meanwhile(**kwargs):
        out = real(**kwargs)
        job_cancel(job=Job.objects.get(pk=job.pk))  # a user cancels while the parse finishes
        return out

    monkeypatch.setattr(ingestion, "_chunks_replace", cancelled_meanwhile)
    with django_capture_on_commit_callbacks(execute=True) as sent:
        ingest_documents.run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.queue) == (JobStatus.CANCELLED, "cpu")  # not sent on to gpu
    assert not sent
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.FAILED
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == ReservationStatus.RELEASED
