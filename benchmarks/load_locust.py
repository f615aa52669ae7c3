"""Load on loopback: several teams and API keys, mixed search / ask / chat / stream / upload / usage,
against gunicorn on PostgreSQL, with the ledger checked against what the clients were told (issue 24).

    .venv/bin/python -m benchmarks.load_locust [--duration 60] [--users 16] [--teams 4] [--workers 2]
        [--tasks inprocess|celery] [--json out/load_locust.json]

Needs locust (dev extras) and a PostgreSQL server; DATABASE_URL names the database to use (default
postgresql://postgres@127.0.0.1:5432/parsimony_load), which is dropped and created afresh. The script:

1. starts a fake OpenAI-compatible endpoint on loopback (tests/support/fake_openai.py: exact o200k usage,
   no model work, so the two-core machine serves requests rather than a model), priced per token;
2. migrates the database and makes `--teams` teams, each with two API keys, a corpus of a few small
   documents (ingested with the packaged embedding model) and a BM25 pipeline answering with the fake
   endpoint;
3. starts gunicorn with the repository's gunicorn.conf.py (gthread). `--tasks inprocess` (the default):
   tasks run in the gunicorn processes (no broker). `--tasks celery`: real Celery workers, as the
   Makefile starts them, one worker for every queue of `workers.queues.Queue` (its `worker-<queue>`
   target's arguments) and one `celery beat`, on the broker CELERY_BROKER_URL (required; its queues are
   emptied first); they are started before the seed documents ingest and stopped (TERM, a warm
   shutdown) at the end, and the report says how each one exited;
4. runs locust headless (this file is also its locustfile) for `--duration` seconds: every user takes
   one key of one team and mixes BM25 search, a synchronous RAG query (`POST /api/v1/queries`), an
   OpenAI-compatible chat on the pipeline (cost in `X-Parsimony-Cost`), the same streamed (cost in the
   final usage chunk), a small upload, and `GET /api/v1/usage`;
5. waits for the uploads' ingestion, then prints a JSON summary: per endpoint requests, throughput,
   p50/p95/p99 (ms) and failures; and the ledger of the load's teams against the sum of the costs the
   clients were told. Queries and chats report their cost and must match the ledger exactly; an
   upload's answer carries no cost (its embedding is billed when the background ingestion runs), so
   the ingestion rows are reported beside it, not in the comparison.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from benchmarks.celery_workers import CeleryProcesses, broker_purge
from benchmarks.common import stop_process_group, wait_ready

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_load"
WORDS = (
    "the river flows past the old mill where grain was ground for the town bakery each morning "
    "cost aware retrieval keeps prompts short and answers cheap while budgets hold every team to its limit "
    "a ledger row records the tokens and the price of every model call"
).split()

# ---------------------------------------------------------------------------------------------- locustfile
# locust imports this module as its locustfile: only the classes below run there.
try:
    from locust import HttpUser, between, events, task
except ImportError:  # the orchestrator runs without locust importable in its own process as well
    HttpUser = None


def _plan() -> list[dict]:
    return json.loads(Path(os.environ["LOAD_PLAN"]).read_text())


if HttpUser is not None:
    _SEEN: list[str] = []  # every cost a client was told, as the decimal string it got
    _SLOTS = itertools.count()

    @events.quitting.add_listener
    def _write_costs(environment, **kwargs) -> None:
        if os.environ.get("LOAD_COSTS_OUT"):
            Path(os.environ["LOAD_COSTS_OUT"]).write_text(json.dumps(_SEEN))

    class TeamUser(HttpUser):
        """One client of one team, with one of its API keys."""

        wait_time = between(0.05, 0.5)

        def on_start(self) -> None:
            plan = _plan()
            slot = next(_SLOTS)
            self.team = plan[slot % len(plan)]
            key = self.team["keys"][(slot // len(plan)) % len(self.team["keys"])]
            self.client.headers["Authorization"] = f"Bearer {key}"
            self.rng = random.Random(slot)

        def _question(self) -> str:
            return " ".join(self.rng.choices(WORDS, k=8)) + "?"

        @task(5)
        def search(self) -> None:
            self.client.post(
                f"/api/v1/corpora/{self.team['corpus_id']}/search",
                json={"query": self._question(), "retriever": "bm25", "k": 3}, name="search",
            )

        @task(4)
        def ask(self) -> None:
            with self.client.post(
                "/api/v1/queries", json={"pipeline": self.team["pipeline"], "question": self._question()},
                name="ask", catch_response=True,
            ) as response:
                if response.status_code == 200:
                    _SEEN.append(response.json()["cost"])
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")

        @task(2)
        def chat(self) -> None:
            with self.client.post(
                "/v1/chat/completions",
                json={"model": self.team["pipeline"], "messages": [{"role": "user", "content": self._question()}]},
                name="chat", catch_response=True,
            ) as response:
                if response.status_code == 200:
                    _SEEN.append(response.headers["X-Parsimony-Cost"])
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")

        @task(2)
        def stream(self) -> None:
            body = {
                "model": self.team["pipeline"], "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": self._question()}],
            }
            with self.client.post(
                "/v1/chat/completions", json=body, name="stream", stream=True, catch_response=True
            ) as response:
                cost = None
                for line in response.iter_lines():
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if "parsimony" in chunk:
                            cost = chunk["parsimony"]["cost"]
                if response.status_code == 200 and cost is not None:
                    _SEEN.append(cost)
                else:
                    response.failure(f"{response.status_code}: no cost in the stream")

        @task(1)
        def upload(self) -> None:
            text = " ".join(self.rng.choices(WORDS, k=120))
            name = f"load-{self.rng.getrandbits(48):012x}.txt"
            self.client.post(
                f"/api/v1/corpora/{self.team['corpus_id']}/documents",
                files={"file": (name, text.encode(), "text/plain")}, name="upload",
            )

        @task(2)
        def usage(self) -> None:
            self.client.get("/api/v1/usage", name="usage")


# ---------------------------------------------------------------------------------------------- orchestrator


def _database(url: str) -> None:
    """Drop and create the database `url` names (a benchmark database, never a shared one)."""
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _setup(*, teams: int, fake_base_url: str) -> list[dict]:
    """Teams, keys, corpora (queued for ingestion: `_jobs_wait`) and pipelines; returns the plan the locust
    users read."""
    import django

    django.setup()
    from django.utils import timezone

    from apps.accounts.services import api_key_create, team_create
    from apps.corpora.services import corpus_create, document_upload
    from apps.costs.models import ModelEndpoint, Price
    from apps.rag.services import pipeline_save

    Price.objects.create(
        model_name="load/fake-remote", effective_from=timezone.now() - timezone.timedelta(days=1),
        input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"), source="benchmarks/load_locust.py",
    )
    # A gpu worker loads and calibrates every enabled local model when it starts: the load answers with
    # the fake remote endpoint, so the packaged chat model stays off (the embedding model serves uploads).
    ModelEndpoint.objects.filter(kind="local").update(enabled=False)
    ModelEndpoint.objects.create(
        name="fake-remote", kind="openai", base_url=fake_base_url, remote_model="gpt-4o-mini",
        price_name="load/fake-remote", max_output_tokens=64,
    )
    plan = []
    for t in range(teams):
        team = team_create(name=f"Load team {t}")
        keys = [
            api_key_create(team=team, name=f"load {t}.{k}", scopes=["read", "query", "ingest"]).raw_key
            for k in range(2)
        ]
        corpus = corpus_create(team=team, user=None, name=f"load-{t}")
        rng = random.Random(t)
        for d in range(4):
            text = " ".join(rng.choices(WORDS, k=200))
            document_upload(corpus=corpus, filename=f"seed-{t}-{d}.txt", data=text.encode())
        pipeline = pipeline_save(
            team=team, name=f"load-{t}", model_endpoint="fake-remote", corpora=[corpus], retriever="bm25", top_k=3,
            max_output_tokens=32,
        )
        plan.append({"team_id": team.pk, "keys": keys, "corpus_id": corpus.pk, "pipeline": pipeline.name})
    return plan


def _jobs_wait(timeout_s: float) -> int:
    """Wait for the seed documents' ingestion (this process's background threads, or the workers). -> jobs left."""
    from apps.core.models import Job

    deadline = time.monotonic() + timeout_s
    while (left := Job.objects.filter(status__in=["queued", "running"]).count()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _stats(csv_path: Path, duration_s: float) -> dict:
    rows = {}
    with csv_path.open() as handle:
        for row in csv.DictReader(handle):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 2),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
            }
    return rows


def _ledger(team_ids: list[int], wait_s: float) -> dict:
    from django.db.models import Count, Q, Sum

    from apps.core.models import Job
    from apps.costs.models import UsageRecord

    deadline = time.monotonic() + wait_s
    while Job.objects.filter(team_id__in=team_ids, status__in=["queued", "running"]).exists():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    rows = UsageRecord.objects.filter(team_id__in=team_ids)
    totals = rows.aggregate(
        all=Sum("cost"), n=Count("id"),
        runs=Sum("cost", filter=Q(query_run_id__isnull=False) | Q(agent_run_id__isnull=False)),
        other=Sum("cost", filter=Q(query_run_id__isnull=True, agent_run_id__isnull=True)),
    )
    by_stage = {
        row["stage"]: str(row["cost"]) for row in rows.values("stage").annotate(cost=Sum("cost")).order_by("stage")
    }
    unfinished = Job.objects.filter(team_id__in=team_ids, status__in=["queued", "running"]).count()
    return {
        "rows": totals["n"], "total": totals["all"] or Decimal(0), "runs": totals["runs"] or Decimal(0),
        "other": totals["other"] or Decimal(0), "by_stage": by_stage, "jobs_unfinished": unfinished,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=8)
    parser.add_argument("--teams", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tasks", choices=["inprocess", "celery"], default="inprocess",
                        help="where background tasks run: the web processes (no broker), or real Celery workers "
                             "(one per queue, and beat) on CELERY_BROKER_URL")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    var = Path(tempfile.mkdtemp(prefix="parsimony-load-"))
    if args.tasks == "inprocess":
        os.environ.pop("CELERY_BROKER_URL", None)  # tasks in-process, in the gunicorn workers
    elif not (os.environ.get("CELERY_BROKER_URL") or "").startswith("redis"):
        parser.error("--tasks celery needs CELERY_BROKER_URL (a Redis database of its own: its queues are emptied)")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="apps.config.settings", PARSIMONY_VAR_DIR=str(var),
        # The per-key rate limit is not what is measured: lift it.
        PARSIMONY_API_KEY_RATE="1000000/min", PYTHONWARNINGS="ignore",
    )
    sys.path.insert(0, str(ROOT))
    from tests.support.fake_openai import FakeOpenAIServer

    _database(os.environ["DATABASE_URL"])
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    report: dict = {"command": " ".join(sys.argv), "duration_s": args.duration, "users": args.users,
                    "teams": args.teams, "keys_per_team": 2, "gunicorn_workers": args.workers, "tasks": args.tasks}
    celery = CeleryProcesses(var) if args.tasks == "celery" else None
    with FakeOpenAIServer(prompt_token_factor=1.0, chunk_delay_s=0.005) as fake:
        started = time.monotonic()
        if celery is not None:
            broker_purge(os.environ["CELERY_BROKER_URL"])  # before the seed documents queue their ingestion
        plan = _setup(teams=args.teams, fake_base_url=fake.base_url)
        try:
            if celery is not None:
                celery.start()
                celery.wait_ready(timeout_s=300.0)
            report["setup_jobs_unfinished"] = _jobs_wait(timeout_s=300.0)
            report["setup_s"] = round(time.monotonic() - started, 1)
            _load(args, var, plan, report)
        finally:
            if celery is not None:
                report["celery_processes"] = celery.stop()
        report["fake_endpoint_requests"] = fake.requests
    return _report(args, report)


def _load(args: argparse.Namespace, var: Path, plan: list[dict], report: dict) -> None:
    """gunicorn up, locust for ``args.duration``, then the ledger: the results into ``report``."""
    plan_path = var / "plan.json"
    plan_path.write_text(json.dumps(plan))
    server_log = (var / "gunicorn.log").open("w")
    report["server_log"] = str(var / "gunicorn.log")
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "apps.config.wsgi:application", "--bind", f"127.0.0.1:{args.port}",
         "--workers", str(args.workers), "--log-level", "warning"],
        # Its log goes to a file: an unread pipe would fill and block the workers' logging.
        cwd=ROOT, env=os.environ.copy(), start_new_session=True, stdout=server_log, stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(args.port, timeout_s=90.0)
        costs_path, csv_prefix = var / "costs.json", var / "locust"
        locust = subprocess.run(
            [str(BIN / "locust"), "-f", str(Path(__file__).resolve()), "--headless", "--only-summary",
             "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
             "-H", f"http://127.0.0.1:{args.port}", "--csv", str(csv_prefix), "--stop-timeout", "30",
             "--loglevel", "WARNING"],
            cwd=ROOT, env={**os.environ, "LOAD_PLAN": str(plan_path), "LOAD_COSTS_OUT": str(costs_path)},
            capture_output=True, text=True,
        )
        report["locust_rc"] = locust.returncode
        if locust.returncode not in (0, 1):  # 1: some requests failed (reported below)
            report["locust_stderr"] = locust.stderr[-2000:]
        report["endpoints"] = _stats(Path(f"{csv_prefix}_stats.csv"), args.duration)
        failures = Path(f"{csv_prefix}_failures.csv")
        report["failure_kinds"] = [
            {"name": row["Name"], "error": row["Error"][:200], "count": int(row["Occurrences"])}
            for row in csv.DictReader(failures.open())
        ] if failures.exists() else []
        seen = [Decimal(cost) for cost in json.loads(costs_path.read_text())] if costs_path.exists() else []
        ledger = _ledger([team["team_id"] for team in plan], wait_s=120)
    finally:
        stop_process_group(server, 30)
    client_total = sum(seen, Decimal(0))
    report["costs"] = {
        "client_reported_calls": len(seen),
        "client_total": str(client_total),
        "ledger_runs_total": str(ledger["runs"]),
        "ledger_equals_clients": ledger["runs"] == client_total,
        "ledger_ingestion_total": str(ledger["other"]),
        "ledger_total": str(ledger["total"]),
        "ledger_rows": ledger["rows"],
        "ledger_by_stage": ledger["by_stage"],
        "jobs_unfinished_after_wait": ledger["jobs_unfinished"],
    }


def _report(args: argparse.Namespace, report: dict) -> dict:
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
