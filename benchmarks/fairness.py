"""Fairness between teams with real workers (issue 24: "with one long job running, another team's short query
still completes"): team B's short jobs, alone and while team A's long ingestion runs.

    .venv/bin/python -m benchmarks.fairness [--documents 300] [--group-chunks 32] [--runs 3] \
        [--no-compare] [--json out/fairness.json]

Needs PostgreSQL and Redis. ``--database-url`` (default postgresql://postgres@127.0.0.1:5432/parsimony_fairness)
is dropped and created afresh; ``CELERY_BROKER_URL`` (default redis://127.0.0.1:6379/14) is the broker, its
queues emptied first. The script starts the production worker shapes: a cpu worker, a gpu worker (prefork,
one child) and an io worker (threads), with a fake OpenAI-compatible endpoint on loopback as the remote model
(tests/support/fake_openai.py: no model work). Team B has a small corpus and a hybrid pipeline answering with
the remote model. Team B's two short jobs, sent together:

- ``query``: a RAG query on its pipeline (remote generator: the ``io`` queue; its query embedding runs there);
- ``embeddings``: an embedding request of one short text (``POST /v1/embeddings``: the ``gpu`` queue).

Each latency is its Job row's ``finished_at - created_at``. Measured ``--runs`` times alone, then while team A
ingests ``--documents`` one-chunk records (parsed on cpu, embedded on gpu; an import makes one job per 500
records): B's jobs are sent once one of A's jobs is embedding. That is done with the gpu worker embedding
in groups of ``--group-chunks`` chunks (the job is queued again between groups) and, for comparison
(unless ``--no-compare``), in one group (each job's whole embedding in one gpu turn, as before the
groups). Prints JSON: medians and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_json

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_fairness"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"
FINISHED = ("succeeded", "failed", "cancelled")


def _database(url: str) -> None:
    """Drop and create the database ``url`` names (a benchmark database, never a shared one)."""
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class Workers:
    """The cpu, gpu and io workers, as docs/operations.md starts them (smaller concurrency: 2 cores)."""

    def __init__(self, var: Path, env: dict[str, str]) -> None:
        self.var, self.env, self.processes = var, {**os.environ, **env}, []

    def start(self) -> None:
        shapes = {
            "cpu": ["-Q", "cpu", "--pool", "solo"],
            "gpu": ["-Q", "gpu", "--pool", "prefork", "--concurrency", "1"],
            "io": ["-Q", "io", "--pool", "threads", "--concurrency", "4"],
        }
        for name, shape in shapes.items():
            log = (self.var / f"{name}-{len(self.processes)}.log").open("w")
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", "worker", *shape, "-n", f"{name}@%h",
                 "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            ))

    def check(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited with {process.returncode}; logs in {self.var}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []


def _wait(predicate, *, timeout_s: float, workers: Workers) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        workers.check()
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s; logs in {workers.var}")


def _setup(fake_base_url: str, workers: Workers) -> dict[str, Any]:
    from decimal import Decimal

    from apps.accounts.services import team_create, user_create
    from apps.core.models import Job
    from apps.corpora.services import corpus_create, documents_import_records
    from apps.costs.models import ModelEndpoint
    from apps.costs.services import price_set
    from apps.rag.services import pipeline_save

    price_set(model_name="fairness/fake-remote", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))
    ModelEndpoint.objects.filter(kind="local").update(enabled=False)  # no chat model to calibrate at start
    ModelEndpoint.objects.create(
        name="fake-remote", kind="openai", base_url=fake_base_url, remote_model="gpt-4o-mini",
        price_name="fairness/fake-remote", max_output_tokens=32,
    )
    team_a, team_b = team_create(name="Team A"), team_create(name="Team B")
    user_a = user_create(username="fairness-a", password="x-fairness-a-x")
    user_b = user_create(username="fairness-b", password="x-fairness-b-x")
    corpus_b = corpus_create(team=team_b, user=user_b, name="handbook")
    facts = ["Refunds are paid within 14 days.", "The office opens at 8 am.", "Support answers in 2 hours."]
    documents_import_records(
        corpus=corpus_b, filename="handbook.jsonl", data="\n".join(json.dumps({"text": f}) for f in facts).encode(),
        user=user_b,
    )
    pipeline = pipeline_save(
        team=team_b, name="handbook", model_endpoint="fake-remote", corpora=[corpus_b], retriever="hybrid", top_k=2,
        max_output_tokens=16,
    )
    _wait(lambda: not Job.objects.exclude(status__in=FINISHED).exists(), timeout_s=600, workers=workers)
    return {"team_a": team_a, "user_a": user_a, "team_b": team_b, "user_b": user_b, "pipeline": pipeline}


def _b_jobs(setup: dict[str, Any]) -> list[int]:
    """Team B's query and embedding request, sent together; their Job ids."""
    from apps.core.services import job_start
    from apps.costs.services import LedgerContext
    from apps.costs.services.holds import hold_open
    from apps.rag.embeddings import embeddings_bound
    from apps.rag.services import query_run_start

    team, user = setup["team_b"], setup["user_b"]
    run = query_run_start(team=team, pipeline=setup["pipeline"], question="When are refunds paid?", user=user)
    texts = ["when are refunds paid"]
    hold = hold_open(  # what POST /v1/embeddings does (apps.rag.embeddings.embeddings_create), without waiting
        path="embeddings_api", context=LedgerContext(team=team, user=user),
        estimate=embeddings_bound(model="all-MiniLM-L6-v2", texts=texts), description="embeddings",
    )
    job = job_start(
        kind="embeddings.create", team=team, created_by=user,
        params={"model": "all-MiniLM-L6-v2", "texts": texts, "reservation_id": hold.reservation.pk,
                "user_id": user.pk, "api_key_id": None},
    )
    return [run.job_id, job.pk]


def _b_latencies(job_ids: list[int], workers: Workers) -> dict[str, float]:
    from apps.core.models import Job

    jobs = Job.objects.filter(pk__in=job_ids)
    _wait(lambda: jobs.filter(status__in=FINISHED).count() == len(job_ids), timeout_s=600, workers=workers)
    out = {}
    for job in jobs:
        if job.status != "succeeded":
            raise RuntimeError(f"team B's job {job.pk} ({job.kind}) {job.status}: {job.error}")
        name = "query" if job.kind == "rag.query" else "embeddings"
        out[f"{name}_ms"] = round(1000 * (job.finished_at - job.created_at).total_seconds(), 1)
        out[f"{name}_queue"] = job.queue
    return out


def _during_ingestion(setup: dict[str, Any], run: int, documents: int, workers: Workers) -> dict[str, Any]:
    """One run: team A imports ``documents`` records (one ingestion job per INGEST_JOB_DOCUMENTS of them);
    team B's jobs go once one of A's jobs is embedding on the gpu worker."""
    from apps.core.models import Job
    from apps.corpora.services import corpus_create, documents_import_records

    corpus = corpus_create(team=setup["team_a"], user=setup["user_a"], name=f"rivers-{time.time_ns()}",
                           chunk_tokens=64, overlap_tokens=8)
    records = "\n".join(
        json.dumps({"text": f"Run {run} fact {i}: river {i} flows north for {i * 7} km past {i} towns."})
        for i in range(documents)
    ).encode()
    before = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    documents_import_records(corpus=corpus, filename="rivers.jsonl", data=records, user=setup["user_a"])
    a_jobs = Job.objects.filter(kind="corpora.ingest", team=setup["team_a"], pk__gt=before)
    _wait(lambda: a_jobs.filter(queue="gpu", status="running").exists()
          or a_jobs.filter(status__in=FINISHED).exists(), timeout_s=600, workers=workers)
    latencies = _b_latencies(_b_jobs(setup), workers)
    a_unfinished_when_b_done = a_jobs.exclude(status__in=FINISHED).count()
    ready_then = corpus.documents.filter(status="ready").count()
    _wait(lambda: not a_jobs.exclude(status__in=FINISHED).exists(), timeout_s=900, workers=workers)
    done = list(a_jobs)
    failed = [job for job in done if job.status != "succeeded"]
    if failed:
        raise RuntimeError(f"team A's ingestion {failed[0].status}: {failed[0].error}")
    return {
        **latencies,
        "a_jobs": len(done),
        "b_done_before_a": a_unfinished_when_b_done > 0,
        "a_documents_ready_when_b_done": ready_then,
        "a_ingestion_s": round((max(j.finished_at for j in done) - min(j.created_at for j in done)).total_seconds(), 2),
        "a_gpu_turns": sum(job.attempts - 1 for job in done),
    }


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("query_ms", "embeddings_ms", "a_ingestion_s"):
        values = [row[key] for row in rows if key in row]
        if values:
            out[f"{key}_median"] = round(statistics.median(values), 2)
    if rows and "b_done_before_a" in rows[0]:
        out["b_done_before_a"] = f"{sum(row['b_done_before_a'] for row in rows)}/{len(rows)}"
    return out


def _config(name: str, group_chunks: int, args, setup_holder: dict, var: Path, fake_url: str) -> dict[str, Any]:
    workers = Workers(var, {"PARSIMONY_INGEST_EMBED_GROUP_CHUNKS": str(group_chunks)})
    workers.start()
    try:
        if not setup_holder:
            setup_holder.update(_setup(fake_url, workers))
        setup = setup_holder
        _b_latencies(_b_jobs(setup), workers)  # warm-up: each worker has loaded its models
        result: dict[str, Any] = {"group_chunks": group_chunks}
        if "alone" not in setup_holder:
            alone = [_b_latencies(_b_jobs(setup), workers) for _ in range(args.runs)]
            setup_holder["alone"] = {**_medians(alone), "runs": alone}
        during = [_during_ingestion(setup, run, args.documents, workers) for run in range(args.runs)]
        result.update({**_medians(during), "runs": during})
        print(f"{name}: {json.dumps(_medians(during))}", file=sys.stderr)
        return result
    finally:
        workers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=300, help="team A's one-chunk records")
    parser.add_argument("--group-chunks", type=int, default=32, help="chunks per gpu turn (the setting)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("FAIRNESS_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the comparison run with the whole embedding in one gpu turn per job")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="parsimony-fairness-"))
    broker = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    os.environ.update(
        DATABASE_URL=args.database_url, CELERY_BROKER_URL=broker, DATA_ROOT=str(var), PARSIMONY_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="apps.config.settings", SECRET_KEY="fairness-benchmark", PYTHONWARNINGS="ignore",
    )
    import redis

    redis.Redis.from_url(broker).delete("cpu", "gpu", "io", "unacked", "unacked_index", "unacked_mutex")
    _database(args.database_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    from benchmarks.common import setup_django

    setup_django()
    sys.path.insert(0, str(ROOT))
    from tests.support.fake_openai import FakeOpenAIServer

    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.fairness", *sys.argv[1:]]), "documents": args.documents,
        "runs": args.runs, "logs": str(var),
    }
    setup: dict[str, Any] = {}
    with FakeOpenAIServer(reply="Refunds are paid within 14 days.") as fake:
        during = {"groups": _config("groups", args.group_chunks, args, setup, var, fake.base_url)}
        if args.compare:
            during["one_group"] = _config("one group", 10 * args.documents, args, setup, var, fake.base_url)
    report["b_alone"] = setup["alone"]
    report["b_during_a_ingestion"] = during
    print(write_json(Path(args.json), report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
