"""Fault tests: SIGKILL a real gpu worker mid-ingest, mid-generation and mid-prefill, and the reaper (run by
celery beat on a cpu worker, as in production) recovers the work: the ingestion is redelivered to a new gpu
worker and completes with each chunk and ledger row once; the query fails with the reason, its hold settled
to its ledger rows; a fixed context's prefill is redelivered and stores one whole KV entry, billed once.
Heartbeat, stale timeout and reaper interval are shortened here (``FAST``); docs/reliability.md has the
measured times.

``PARSIMONY_RECOVERY_TEST_DEFAULTS=1`` runs them with the production defaults instead (minutes, to measure).
"""

from __future__ import annotations

import json
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Count, Q

from apps.core.models import FINISHED_STATUSES, Job, JobStatus
from apps.corpora.models import Chunk, DocumentStatus
from apps.corpora.services import corpus_create, documents_import_records
from apps.costs.models import ModelEndpoint, Reservation, ReservationStatus, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import budget_save, price_set
from apps.rag.fixed_context import (
    PREFILL_JOB_KIND,
    PREFILL_STAGE,
    fixed_context_prefill_execute,
    fixed_context_prefill_start,
)
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save, query_run_start
from tests.integration.conftest import wait_for
from tests.support.fake_openai import FakeOpenAIServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAST = (
    {}
    if os.environ.get("PARSIMONY_RECOVERY_TEST_DEFAULTS")
    else {"PARSIMONY_JOB_HEARTBEAT_S": "0.5", "PARSIMONY_JOB_STALE_AFTER_S": "3", "PARSIMONY_JOB_REAP_EVERY_S": "1"}
)
RECOVERY_TIMEOUT_S = 60 if FAST else 240


def _beat_and_cpu_worker(processes, tmp_path):
    """As in production: celery beat, and a cpu worker that runs the reaper it schedules."""
    beat = processes.start("beat", "-s", str(tmp_path / "beat-schedule"), log_name="beat.log")
    return beat, processes.worker("cpu", queues="cpu")


def _kill(worker) -> float:
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    return time.monotonic()


@pytest.fixture(autouse=True)
def _no_local_chat_model(db):
    # A worker calibrates each enabled local model when it starts (a minute for the chat model on a small
    # CPU): these tests use the embedder and a remote endpoint only.
    ModelEndpoint.objects.filter(kind="local").update(enabled=False)


def _no_open_holds() -> None:
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()


def test_an_ingestion_whose_worker_is_killed_mid_embedding_is_redelivered_and_completes_once(
    celery_processes, team_a, alice, tmp_path
):
    processes = celery_processes(**FAST)
    beat, cpu = _beat_and_cpu_worker(processes, tmp_path)
    first = processes.worker("gpu-first", queues="gpu")
    corpus = corpus_create(team=team_a, name="Facts", user=alice, chunk_tokens=64, overlap_tokens=8)
    texts = [  # a few seconds of embedding on one CPU thread, one chunk each
        f"Fact {i}: the river number {i} flows north for {i * 7} kilometres past {i} towns, "
        f"{i + 3} bridges and {i * 2} mills before it meets the sea near harbour {i % 17}." for i in range(200)
    ]
    records = "\n".join(json.dumps({"text": text}) for text in texts).encode()
    documents = documents_import_records(corpus=corpus, filename="facts.jsonl", data=records, user=alice)
    job = Job.objects.get(kind="corpora.ingest")

    embedding = wait_for(
        lambda: Job.objects.filter(Q(message__startswith="embedding") | Q(status__in=FINISHED_STATUSES), pk=job.pk)
        .first(),
        timeout=120, processes=processes, alive=[first, beat, cpu],
    )
    assert embedding.status == JobStatus.RUNNING, (embedding.status, embedding.error, embedding.result)
    assert embedding.queue == "gpu"  # parsed on the cpu worker, embedding on the gpu worker
    killed_at = _kill(first)
    assert corpus.documents.filter(status=DocumentStatus.PROCESSING).count() == len(documents)
    second = processes.worker("gpu-second", queues="gpu")

    reaped = wait_for(
        lambda: Job.objects.filter(pk=job.pk).exclude(status=JobStatus.RUNNING, attempts=embedding.attempts).first(),
        timeout=RECOVERY_TIMEOUT_S, processes=processes, alive=[second, beat, cpu],
    )
    reaped_s = time.monotonic() - killed_at
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=FINISHED_STATUSES).first(),
        timeout=RECOVERY_TIMEOUT_S, processes=processes, alive=[second, beat, cpu],
    )
    done_s = time.monotonic() - killed_at
    print(f"\ningestion: reaped {reaped_s:.1f} s after the kill, done {done_s:.1f} s after it ({FAST or 'defaults'})")

    assert reaped.attempts == embedding.attempts + 1 or reaped.error.endswith("redelivered"), (
        reaped.status, reaped.error
    )
    # Parsed on the cpu worker (attempt 1), embedded on the first gpu worker (2, killed), then the second (3).
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 3), done.error
    assert corpus.documents.filter(status=DocumentStatus.READY).count() == len(documents)
    chunks = Chunk.objects.filter(document__corpus=corpus)
    assert not chunks.values("document_id", "ordinal").annotate(n=Count("pk")).filter(n__gt=1).exists()
    assert chunks.count() == len(documents)  # one short chunk each
    assert UsageRecord.objects.filter(reservation_id=job.params["reservation_id"]).count() == 1
    _no_open_holds()
    assert ledger_reconcile() == []


def test_a_query_whose_worker_is_killed_mid_generation_fails_with_the_reason_and_holds_nothing(
    celery_processes, team_a, alice, tmp_path
):
    processes = celery_processes(**FAST)
    beat, cpu = _beat_and_cpu_worker(processes, tmp_path)
    # A remote endpoint's generation runs on the io queue (docs/reliability.md, "Fairness and queues").
    first = processes.worker("io-first", queues="io")
    price_set(model_name="test/fake-gpt", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))
    budget_save(team=team_a, hard_limit=Decimal(100), period="day")
    with FakeOpenAIServer(reply="slowly " * 400, chunk_delay_s=0.1, tokens_per_chunk=1) as server:
        endpoint = ModelEndpoint.objects.create(
            name="fake-gpt", kind="openai", base_url=server.base_url, remote_model="gpt-4o-mini",
            price_name="test/fake-gpt", max_output_tokens=400,
        )
        run = query_run_start(
            team=team_a, endpoint=endpoint, messages=[{"role": "user", "content": "Go on."}], user=alice
        )
        wait_for(
            lambda: QueryRun.objects.filter(pk=run.pk, status="running").exclude(answer="").exists(),
            timeout=120, processes=processes, alive=[first, beat, cpu],
        )
        killed_at = _kill(first)

    # Failing it takes no io worker: the cpu worker runs the reaper.
    job = wait_for(
        lambda: Job.objects.filter(pk=run.job_id, status__in=FINISHED_STATUSES).first(),
        timeout=RECOVERY_TIMEOUT_S, processes=processes, alive=[beat, cpu],
    )
    print(f"\nquery: failed {time.monotonic() - killed_at:.1f} s after the kill ({FAST or 'defaults'})")

    assert job.status == JobStatus.FAILED and "lost: no heartbeat" in job.error
    run.refresh_from_db()
    assert run.status == "failed" and "no heartbeat" in run.error and run.finished_at is not None
    assert run.cost == sum(row.cost for row in UsageRecord.objects.filter(query_run_id=run.pk))
    _no_open_holds()
    assert ledger_reconcile() == []


def _fixed_context() -> str:
    """About 1,300 SmolLM2 tokens: three prefill chunks of 512, each 5-15 s on one shared CPU thread (the
    prefill keeps every layer's queries too, so it is slower than a plain forward pass)."""
    return "\n".join(
        f"Section {i}. The depot in town {i} opens at {6 + i % 5} o'clock, keeps {i * 3} lorries and "
        f"{i % 11 + 2} forklifts, and ships {i * 13} crates a week to the port of harbour {i % 17}."
        for i in range(24)
    )


def _share_converted_models(model_cache_dir: Path, tmp_path: Path) -> None:
    # The workers' DATA_ROOT is tmp_path: point its model folder at the converted SmolLM2 the smollm2
    # fixture made, so that no worker converts the GGUF again (half a minute each).
    (tmp_path / "models").symlink_to(model_cache_dir / "models", target_is_directory=True)


def test_a_prefill_whose_worker_is_killed_mid_prefill_is_redelivered_and_stores_a_whole_kv_once(
    celery_processes, team_a, alice, tmp_path, smollm2, model_cache_dir
):
    from indexes.kv_store import KVStore, _read

    _share_converted_models(model_cache_dir, tmp_path)
    # The fixed context is answered by the local chat model: its endpoint serves (each gpu worker
    # calibrates it when it starts).
    ModelEndpoint.objects.filter(name="smollm2-135m-instruct", team=None).update(enabled=True)
    pipeline = pipeline_save(team=team_a, name="depots", model_endpoint="smollm2-135m-instruct",
                             fixed_context=_fixed_context(), attention_backend="squeezed")
    processes = celery_processes(**FAST)
    beat, cpu = _beat_and_cpu_worker(processes, tmp_path)
    first = processes.worker("gpu-first", queues="gpu")
    job = fixed_context_prefill_start(pipeline=pipeline, user=alice)
    assert job.kind == PREFILL_JOB_KIND
    store_root = tmp_path / "kv-cache"

    prefilling = wait_for(
        lambda: Job.objects.filter(
            Q(message__startswith="prefilling") | Q(status__in=FINISHED_STATUSES), pk=job.pk
        ).first(),
        timeout=240, processes=processes, alive=[first, beat, cpu],
    )
    killed_at = _kill(first)
    killed = Job.objects.get(pk=job.pk)
    assert prefilling.status == JobStatus.RUNNING, (prefilling.status, prefilling.error)
    # Killed mid-prefill: under half way (the prefill is the first of two parts, the index the second),
    # and nothing in the store yet (the KV is written whole once the prefill is done).
    assert killed.status == JobStatus.RUNNING and killed.progress_done < 500, (killed.progress_done, killed.message)
    assert not list(store_root.rglob("*.safetensors"))
    second = processes.worker("gpu-second", queues="gpu")

    reaped = wait_for(
        lambda: Job.objects.filter(pk=job.pk).exclude(status=JobStatus.RUNNING, attempts=1).first(),
        timeout=RECOVERY_TIMEOUT_S, processes=processes, alive=[second, beat, cpu],
    )
    reaped_s = time.monotonic() - killed_at
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=FINISHED_STATUSES).first(),
        timeout=RECOVERY_TIMEOUT_S + 240, processes=processes, alive=[second, beat, cpu],
    )
    done_s = time.monotonic() - killed_at
    print(f"\nprefill: reaped {reaped_s:.1f} s after the kill, done {done_s:.1f} s after it ({FAST or 'defaults'})")

    assert reaped.attempts == 2 or reaped.error.endswith("redelivered"), (reaped.status, reaped.error)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2), done.error
    assert done.result["kv_computed"] is True and done.result["context_tokens"] > 1024, done.result
    [(index_name, index)] = done.result["indexes"].items()
    assert index_name.startswith("squeezed-") and index["computed"] is True

    # The store is whole: the KV entry, the sampled queries and the index, each readable, no temp file left.
    store = KVStore(store_root)
    files = sorted(path.name for path in store_root.rglob("*") if path.is_file() and path.parent != store_root)
    assert files == sorted(["preamble.safetensors", "preamble.queries.safetensors",
                            f"preamble.{index_name}.safetensors"]), files
    assert sum(size for _, size, _ in store.entries()) == done.result["stored_bytes"]
    [entry_path] = store_root.rglob("preamble.safetensors")
    entry = _read(entry_path)
    assert entry.n_tokens == done.result["context_tokens"]
    assert len(entry.keys) == smollm2.model.config.num_hidden_layers
    assert all(bool(tensor.isfinite().all()) for tensor in (*entry.keys, *entry.values))

    # ... and usable: the same job run again here, on a fresh process's model, reads everything from the
    # store (nothing prefilled or built again) and bills nothing.
    again = fixed_context_prefill_execute(params=Job.objects.get(pk=job.pk).params)
    assert again["kv_computed"] is False and again["indexes"][index_name]["computed"] is False, again

    # Billed once: one prefill row, under the hold the job was started under, which is settled.
    rows = UsageRecord.objects.filter(team=team_a)
    assert rows.filter(stage=PREFILL_STAGE).count() == 1
    assert not rows.values("reservation_id", "stage").annotate(n=Count("pk")).filter(n__gt=1).exists()
    assert again["billed"] == done.result["billed"] is not None
    row = rows.get(stage=PREFILL_STAGE)
    assert row.reservation_id == job.params["reservation_id"] and row.prompt_tokens == entry.n_tokens
    _no_open_holds()
    assert ledger_reconcile() == []
