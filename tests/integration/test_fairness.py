"""Isolation of heavy work with real workers on Redis (docs/reliability.md, "Fairness and queues"): while team
A's long ingestion runs (parsed on the cpu worker, embedded on the gpu worker one group per turn), team B's short
jobs complete before it finishes: an embedding request on the same gpu queue (it runs between two of A's groups)
and a chat on a remote endpoint (on the io worker, never behind the gpu queue)."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from apps.core.models import FINISHED_STATUSES, Job, JobStatus
from apps.core.services import job_start
from apps.corpora.models import Chunk, DocumentStatus
from apps.corpora.services import corpus_create, documents_import_records
from apps.costs.models import ModelEndpoint, Reservation, ReservationStatus
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import LedgerContext, price_set
from apps.costs.services.holds import hold_open
from apps.rag.embeddings import embeddings_bound
from apps.rag.services import query_run_start
from tests.integration.conftest import wait_for
from tests.support.fake_openai import FakeOpenAIServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DOCUMENTS = 400  # one chunk each
GROUP_CHUNKS = 16  # 25 gpu turns


@pytest.fixture(autouse=True)
def _no_local_chat_model(db):
    # A gpu worker calibrates each enabled local chat model when it starts (a minute on a small CPU).
    ModelEndpoint.objects.filter(kind="local").update(enabled=False)


def _embeddings_start(team, user, texts: list[str]) -> Job:
    """What POST /v1/embeddings starts (``apps.rag.embeddings.embeddings_create``), without waiting on it."""
    hold = hold_open(
        path="embeddings_api", context=LedgerContext(team=team, user=user),
        estimate=embeddings_bound(model="all-MiniLM-L6-v2", texts=texts), description="embeddings",
    )
    return job_start(
        kind="embeddings.create", team=team, created_by=user,
        params={"model": "all-MiniLM-L6-v2", "texts": texts, "reservation_id": hold.reservation.pk,
                "user_id": user.pk, "api_key_id": None},
    )


def test_another_teams_short_jobs_complete_while_a_long_ingestion_runs(
    celery_processes, team_a, alice, team_b, bob
):
    processes = celery_processes(PARSIMONY_INGEST_EMBED_GROUP_CHUNKS=str(GROUP_CHUNKS))
    cpu = processes.worker("cpu", queues="cpu")
    gpu = processes.start(
        "worker", "-Q", "gpu", "--pool", "prefork", "--concurrency", "1", "-n", "gpu@%h",
        "--without-gossip", "--without-mingle", log_name="gpu.log",
    )
    io = processes.start(
        "worker", "-Q", "io", "--pool", "threads", "--concurrency", "4", "-n", "io@%h",
        "--without-gossip", "--without-mingle", log_name="io.log",
    )
    workers = [cpu, gpu, io]
    corpus = corpus_create(team=team_a, name="Rivers", user=alice, chunk_tokens=64, overlap_tokens=8)
    records = "\n".join(
        json.dumps({"text": f"Fact {i}: the river number {i} flows north for {i * 7} kilometres past {i} towns."})
        for i in range(DOCUMENTS)
    ).encode()
    documents_import_records(corpus=corpus, filename="rivers.jsonl", data=records, user=alice)
    ingestion = Job.objects.get(kind="corpora.ingest", team=team_a)

    # A's ingestion was parsed on cpu and is embedding on gpu, a group at a time: its first group is ready.
    embedding = wait_for(
        lambda: (corpus.documents.filter(status=DocumentStatus.READY).exists()
                 or Job.objects.filter(pk=ingestion.pk, status__in=FINISHED_STATUSES).exists())
        and Job.objects.get(pk=ingestion.pk),
        timeout=180, processes=processes, alive=workers,
    )
    assert embedding.queue == "gpu"
    assert embedding.status not in FINISHED_STATUSES, (embedding.status, embedding.error)
    assert 0 < corpus.documents.filter(status=DocumentStatus.READY).count() < DOCUMENTS

    price_set(model_name="test/fake-gpt", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))
    with FakeOpenAIServer(reply="The answer is 42.") as server:
        remote = ModelEndpoint.objects.create(
            name="fake-gpt", kind="openai", base_url=server.base_url, remote_model="gpt-4o-mini",
            price_name="test/fake-gpt", max_output_tokens=32,
        )
        started = time.monotonic()
        chat = query_run_start(team=team_b, endpoint=remote, messages=[{"role": "user", "content": "Hi?"}], user=bob)
        embeddings = _embeddings_start(team_b, bob, ["a short query from team B"])
        b_jobs = Job.objects.filter(pk__in=[chat.job_id, embeddings.pk])
        wait_for(
            lambda: b_jobs.filter(status__in=FINISHED_STATUSES).count() == 2,
            timeout=120, processes=processes, alive=workers,
        )
        b_latency_s = time.monotonic() - started
        a_then = Job.objects.get(pk=ingestion.pk)
        ready_then = corpus.documents.filter(status=DocumentStatus.READY).count()

    chat_job, embeddings_job = Job.objects.get(pk=chat.job_id), Job.objects.get(pk=embeddings.pk)
    assert (chat_job.status, chat_job.queue) == (JobStatus.SUCCEEDED, "io"), chat_job.error
    assert (embeddings_job.status, embeddings_job.queue) == (JobStatus.SUCCEEDED, "gpu"), embeddings_job.error
    # B finished while A's ingestion was still going: it did not wait for the whole of it.
    assert a_then.status not in FINISHED_STATUSES, (a_then.status, a_then.message)
    assert ready_then < DOCUMENTS

    done = wait_for(
        lambda: Job.objects.filter(pk=ingestion.pk, status__in=FINISHED_STATUSES).first(),
        timeout=300, processes=processes, alive=workers,
    )
    print(f"\nteam B's chat and embedding done {b_latency_s:.2f} s after they were sent; team A's ingestion had "
          f"{ready_then} / {DOCUMENTS} documents ready then; it finished at attempt {done.attempts}")
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.finished_at > max(chat_job.finished_at, embeddings_job.finished_at)
    assert corpus.documents.filter(status=DocumentStatus.READY).count() == DOCUMENTS
    assert Chunk.objects.filter(document__corpus=corpus).count() == DOCUMENTS
    assert done.attempts == 1 + DOCUMENTS // GROUP_CHUNKS  # one parse, then one gpu turn per group
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
    assert ledger_reconcile() == []


def test_a_message_from_a_queue_the_job_has_left_does_not_run_it(celery_processes, team_a):
    from apps.core.services import job_create
    from workers.celery import app

    processes = celery_processes()
    cpu = processes.worker("cpu", queues="cpu")
    # The row names gpu (say the job moved on to its next stage); a message of its cpu stage arrives late.
    job = job_create(kind="diagnostics.probe_cpu", team=team_a, queue="gpu")
    app.send_task("parsimony.diagnostics.probe_cpu", args=(job.pk,), queue="cpu")
    log = processes.tmp_path / "cpu.log"
    wait_for(lambda: "on another queue; skipping" in log.read_text(), timeout=120, processes=processes, alive=[cpu])
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
