"""Ingestion after a worker dies (docs/reliability.md): a redelivered job leaves each chunk and ledger row once;
a job out of attempts, or cancelled, fails its documents and releases its hold; uploading the same file again
ingests it for real."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Count

from apps.core.models import Job, JobStatus
from apps.core.services import job_cancel, job_claim, jobs_reap
from apps.corpora.models import Chunk, Document, DocumentStatus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services import document_upload
from apps.corpora.services import ingestion as ingestion_module
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import holds as holds_module
from tests.apps.corpora.conftest import COFFEE, VOLCANO, ZEBRA

pytestmark = pytest.mark.django_db


class WorkerKilled(BaseException):
    """What the worker's process sees of a SIGKILL: nothing after this point runs."""


def _job_of(document: Document) -> Job:
    return Job.objects.get(kind="corpora.ingest", params__document_ids=[document.pk])


def _die_before_marking_ready(monkeypatch, job: Job) -> None:
    """Run the job's parse stage, then its embed stage until its vectors are written, then kill it: no
    cleanup runs."""
    from workers.tasks.ingestion import ingest_documents

    def killed(**kwargs):
        raise WorkerKilled

    ingest_documents.run_job(job.pk)  # parse (cpu): continued on gpu (the test's transaction sends nothing)
    assert Job.objects.get(pk=job.pk).queue == "gpu"
    with monkeypatch.context() as patch:
        patch.setattr(ingestion_module, "_documents_mark_ready", killed)
        patch.setattr(holds_module.Hold, "settle", lambda self: None)  # a killed process settles nothing
        with pytest.raises(WorkerKilled):
            ingest_documents.run_job(job.pk)


def _stale(job: Job, settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S + 1)
    )


def _no_duplicate_chunks(corpus) -> int:
    chunks = Chunk.objects.filter(document__corpus=corpus)
    duplicated = chunks.values("document_id", "ordinal").annotate(n=Count("pk")).filter(n__gt=1).count()
    assert duplicated == 0
    texts = Counter(Document.objects.filter(corpus=corpus).values_list("sha256", flat=True))
    assert max(texts.values()) == 1  # one document per file
    return chunks.count()


def test_a_redelivered_ingestion_leaves_each_chunk_vector_and_ledger_row_once(
    corpus, alice, settings, monkeypatch, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        document = document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice)
    job = _job_of(document)
    _die_before_marking_ready(monkeypatch, job)
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.PROCESSING
    first_attempt = Chunk.objects.filter(document=document).count()
    assert first_attempt > 0
    _stale(job, settings)

    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_reap() == {"redelivered": 1, "failed": 0}

    job.refresh_from_db()
    # parse (1), embed killed (2), embed again (3): the reaper redelivered the embed stage, not the parse.
    assert (job.status, job.attempts, job.queue) == (JobStatus.SUCCEEDED, 3, "gpu")
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.READY
    assert _no_duplicate_chunks(corpus) == first_attempt
    vectors = corpus_index_store().load(corpus.pk).vector_index
    assert sorted(int(i) for i in vectors.ids()) == sorted(Chunk.objects.values_list("vector_id", flat=True))
    reservation = Reservation.objects.get(pk=job.params["reservation_id"])
    assert UsageRecord.objects.filter(reservation=reservation).count() == 1
    assert reservation.status == ReservationStatus.SETTLED
    assert ledger_reconcile() == []


def test_a_dead_ingestion_out_of_attempts_fails_its_records_and_the_same_upload_ingests_them(
    corpus, team_a, make_api_key, api_client, settings, django_capture_on_commit_callbacks
):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a).raw_key}")
    records = "\n".join(json.dumps({"text": text}) for text in (ZEBRA, VOLCANO, COFFEE)).encode()

    def upload():
        return api_client.post(
            f"/api/v1/corpora/{corpus.pk}/documents",
            {"file": SimpleUploadedFile("facts.jsonl", records)}, format="multipart",
        )

    with django_capture_on_commit_callbacks(execute=False):
        first = upload()
    assert first.status_code == 201 and len(first.json()) == 3
    job = Job.objects.get(kind="corpora.ingest")
    job_claim(job_id=job.pk, worker="gpu@dead:1")
    Job.objects.filter(pk=job.pk).update(attempts=settings.PARSIMONY_JOB_MAX_ATTEMPTS)
    Document.objects.filter(corpus=corpus).update(status=DocumentStatus.PROCESSING)
    _stale(job, settings)

    assert jobs_reap() == {"redelivered": 0, "failed": 1}
    failed = Document.objects.filter(corpus=corpus, status=DocumentStatus.FAILED)
    assert failed.count() == 3
    assert all(d.error.startswith("ingestion failed: worker gpu@dead:1 lost") for d in failed)
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == ReservationStatus.RELEASED

    with django_capture_on_commit_callbacks(execute=True):
        again = upload()
    assert again.status_code == 201
    assert sorted(d["id"] for d in again.json()) == sorted(d["id"] for d in first.json())
    assert Document.objects.filter(corpus=corpus, status=DocumentStatus.READY).count() == 3
    _no_duplicate_chunks(corpus)
    assert ledger_reconcile() == []


def test_a_cancelled_ingestion_fails_its_document_releases_its_hold_and_a_reupload_ingests_it(
    corpus, alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        document = document_upload(corpus=corpus, filename="volcano.txt", data=VOLCANO.encode(), user=alice)
    job = _job_of(document)
    assert job_cancel(job=job) is True
    document.refresh_from_db()
    assert (document.status, document.error) == (DocumentStatus.FAILED, "ingestion cancelled")
    assert Reservation.objects.get(pk=job.params["reservation_id"]).status == ReservationStatus.RELEASED

    with django_capture_on_commit_callbacks(execute=True):
        again = document_upload(corpus=corpus, filename="volcano.txt", data=VOLCANO.encode(), user=alice)
    assert again.pk == document.pk
    assert Document.objects.get(pk=document.pk).status == DocumentStatus.READY
    assert _no_duplicate_chunks(corpus) > 0
