"""Metering overhead and overspend under concurrency, on PostgreSQL.

    .venv/bin/python -m benchmarks.metering --json out/metering.json [--requests 500]

Phase 1 (overhead): each request runs the same EchoTarget call twice, interleaved and in
alternating order: once through ``apps.costs.metering.model_call`` (price lookup, worst-case
reservation against a team + user budget, the engine's ``generate``, the ledger row, the
settlement) and once as the engine's ``generate`` alone. The per-request overhead is the
difference; we report its p50/p95 in milliseconds, plus the queries one metered call makes.
Each request also times one durable single-row write (an autocommitted no-op UPDATE of the
benchmark's budget row): ``db_commit_p50_ms`` / ``db_commit_p95_ms`` are the cost of one commit
(WAL flush) on this machine at that moment, the floor under each committed step of a call.

Phase 2 (overspend): ``--concurrent`` requests from ``--threads`` threads against a budget that
fits about ``--fits`` worst cases, each call costing other than its estimate: local calls (an
EchoTarget billed per CPU-second) of varying length and speed, and remote calls over HTTP to a
fake OpenAI-compatible endpoint on loopback (tests/support/fake_openai.py), half of which report
twice the prompt tokens they read. overspend = max(0, spent - limit - overage rows);
``fit_ok``: every call that fitted succeeded (no errors, all reservations settled, reserved 0,
spent = the ledger rows).

DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/parsimony_bench; the database
is created when missing and migrated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

from benchmarks.common import setup_django, write_json

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_bench"


def _ensure_database(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme.lower() not in {"postgres", "postgresql", "pgsql"}:
        return
    import psycopg
    from psycopg import sql

    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("PARSIMONY_INPROCESS_SYNC", "1")
    setup_django(migrate=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def run(*, requests: int, concurrent: int, threads: int, fits: int, warmup: int) -> dict:
    from django.conf import settings
    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext

    from apps.accounts.models import Role
    from apps.accounts.services import membership_set, team_create, user_create
    from apps.costs import metering
    from apps.costs.models import Budget, ModelEndpoint
    from apps.costs.selectors import budget_status
    from apps.costs.services import BudgetExceeded, LedgerContext, budget_save, price_set
    from workers.runtime.meter import EchoTarget, generate

    tag = uuid.uuid4().hex[:8]
    team = team_create(name=f"bench-{tag}")
    user = user_create(username=f"bench-{tag}", password="bench-password-not-used")
    membership_set(team=team, user=user, role=Role.MEMBER)
    price_name = f"bench/echo-{tag}"
    price_set(model_name=price_name, input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))
    cap = 16
    endpoint = ModelEndpoint.objects.create(
        team=team,
        name=f"echo-{tag}",
        kind="openai",
        base_url="http://echo.invalid/v1",
        price_name=price_name,
        max_output_tokens=cap,
    )
    # A team budget and a user budget: the usual case of two windows locked per call.
    team_budget = budget_save(team=team, hard_limit=Decimal(1_000_000), period="month")
    budget_save(team=team, scope="user", user=user, hard_limit=Decimal(1_000_000), period="day")
    context = LedgerContext(team=team, user=user, pipeline_name="bench")
    target = EchoTarget(reply=" ".join(["word"] * 12))
    metering._target_override = lambda _endpoint: target
    messages = [
        {"role": "system", "content": "Answer from the context."},
        {"role": "user", "content": "What does the benchmark measure? " + "context " * 40},
    ]
    wall = settings.PARSIMONY_MODEL_WALL_TIME_S

    def metered() -> float:
        t0 = time.perf_counter()
        metering.model_call(endpoint=endpoint, messages=messages, context=context)
        return time.perf_counter() - t0

    def plain() -> float:
        t0 = time.perf_counter()
        generate(target=target, messages=messages, max_output_tokens=cap, wall_time_limit_s=wall)
        return time.perf_counter() - t0

    probe_sql = f"UPDATE {Budget._meta.db_table} SET enabled = enabled WHERE id = %s"

    def commit() -> float:
        t0 = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(probe_sql, [team_budget.pk])
        return time.perf_counter() - t0

    for _ in range(warmup):
        metered()
        plain()
    with CaptureQueriesContext(connection) as queries:
        metered()
    queries_per_call = len(queries.captured_queries)

    metered_s: list[float] = []
    plain_s: list[float] = []
    overhead_s: list[float] = []
    commit_s: list[float] = []
    for i in range(requests):
        if i % 2:
            m, p = metered(), plain()
        else:
            p, m = plain(), metered()
        metered_s.append(m)
        plain_s.append(p)
        overhead_s.append(m - p)
        commit_s.append(commit())

    # ------------------------------------------------------------------ concurrent phase
    # Actual differs from the estimate: local calls (a test target billed per CPU-second) run a
    # varying number of words at varying speed, under their wall-time bound; remote calls go to a
    # fake OpenAI-compatible endpoint on loopback that streams slowly and, for half of them,
    # reports twice the prompt tokens it read (more than the bound: only overage rows may cover it).
    import random

    from django.db.models import Sum

    from apps.costs.models import Reservation, ReservationStatus, Stage, UsageRecord
    from apps.costs.pricing import money
    from tests.support.fake_openai import FakeOpenAIServer

    ctag = uuid.uuid4().hex[:8]
    cteam = team_create(name=f"bench-concurrent-{ctag}")
    local_price = f"bench/local-{ctag}"
    price_set(
        model_name=local_price,
        input_per_mtok=Decimal("0.15"),
        output_per_mtok=Decimal("0.60"),
        per_cpu_second=Decimal("0.0001"),
    )
    cendpoints = [
        ModelEndpoint.objects.create(
            team=cteam, name=f"local-{ctag}", kind="local", price_name=local_price, max_output_tokens=cap
        )
    ]
    rng = random.Random(9)
    real_target = metering.endpoint_target

    def target_for(endpoint):
        if endpoint.kind == "local":
            words = rng.randint(2, cap + 4)
            return EchoTarget(reply=" ".join(["word"] * words), seconds_per_token=rng.uniform(0.0, 0.01))
        return real_target(endpoint)

    metering._target_override = None  # phase 1's echo: the remote endpoints resolve for real now
    # The local calls' wall-time bound (what they reserve in CPU-seconds); they need at most ~0.2 s.
    wall_before, settings.PARSIMONY_MODEL_WALL_TIME_S = settings.PARSIMONY_MODEL_WALL_TIME_S, 1.0
    metering.endpoint_target = target_for
    cmessages = [{"role": "user", "content": "one two three four"}]
    with (
        FakeOpenAIServer(prompt_token_factor=1.0, chunk_delay_s=0.005, reply="a short answer") as honest,
        FakeOpenAIServer(
            prompt_token_factor=2.0, chunk_delay_s=0.005, reply="word " * 40, tokens_per_chunk=2
        ) as over,
    ):
        for name, server in (("honest", honest), ("over", over)):
            cendpoints.append(
                ModelEndpoint.objects.create(
                    team=cteam,
                    name=f"{name}-{ctag}",
                    kind="openai",
                    base_url=server.base_url,
                    remote_model="gpt-4o-mini",
                    price_name=price_name,
                    max_output_tokens=cap,
                )
            )
        # A limit that fits about `fits` average worst cases: some calls fit, the rest are refused.
        full = EchoTarget(reply=" ".join(["word"] * cap))
        estimates = [
            metering.call_estimate(
                endpoint=e,
                target=full if e.kind == "local" else real_target(e),
                messages=cmessages,
                max_output_tokens=cap,
            )[1]
            for e in cendpoints
        ]
        cbudget = budget_save(
            team=cteam, hard_limit=money(sum(estimates) / len(estimates) * fits), period="day"
        )
        ccontext = LedgerContext(team=cteam)

        def one(i: int) -> str:
            endpoint = cendpoints[i % len(cendpoints)]
            try:
                metering.model_call(
                    endpoint=endpoint,
                    messages=cmessages,
                    context=ccontext,
                    on_token=(lambda _piece: None) if i % 2 else None,
                    wall_time_limit_s=None if endpoint.kind == "local" else 30.0,
                )
                return "ok"
            except BudgetExceeded:
                return "refused"
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                return f"error: {type(exc).__name__}: {exc}"
            finally:
                connections.close_all()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            outcomes = list(pool.map(one, range(concurrent)))
        concurrent_s = time.perf_counter() - t0
    metering.endpoint_target = real_target
    settings.PARSIMONY_MODEL_WALL_TIME_S = wall_before
    status = budget_status(budget=cbudget)
    rows = UsageRecord.objects.filter(team=cteam)
    overage = rows.filter(stage=Stage.OVERAGE).aggregate(total=Sum("cost"))["total"] or Decimal(0)
    rows_total = rows.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    overspend = max(Decimal(0), status.spent - cbudget.hard_limit - overage)
    errors = sorted({o for o in outcomes if o.startswith("error")})
    settled = Reservation.objects.filter(team=cteam, status=ReservationStatus.SETTLED)
    ratios = [float(r.actual / r.estimate) for r in settled if r.estimate]
    # Every call that fitted succeeded: no errors, every reservation settled, the books balance.
    fit_ok = (
        not errors
        and settled.count() == outcomes.count("ok") == Reservation.objects.filter(team=cteam).count()
        and status.reserved == 0
        and status.spent == rows_total
    )

    return {
        "requests": requests,
        "overhead_p50_ms": _ms(_percentile(overhead_s, 0.50)),
        "overhead_p95_ms": _ms(_percentile(overhead_s, 0.95)),
        "overhead_mean_ms": _ms(statistics.fmean(overhead_s)),
        "overspend": float(overspend),
        "overspend_usd": str(overspend),
        "metered_p50_ms": _ms(_percentile(metered_s, 0.50)),
        "metered_p95_ms": _ms(_percentile(metered_s, 0.95)),
        "unmetered_p50_ms": _ms(_percentile(plain_s, 0.50)),
        "unmetered_p95_ms": _ms(_percentile(plain_s, 0.95)),
        "queries_per_metered_call": queries_per_call,
        "db_commit_p50_ms": _ms(_percentile(commit_s, 0.50)),
        "db_commit_p95_ms": _ms(_percentile(commit_s, 0.95)),
        "budgets_per_call": 2,
        "concurrent": {
            "requests": concurrent,
            "threads": threads,
            "fits": fits,
            "endpoints": ["local (varying seconds)", "remote (honest)", "remote (reports 2x prompt tokens)"],
            "succeeded": outcomes.count("ok"),
            "refused": outcomes.count("refused"),
            "errors": errors[:5],
            "fit_ok": fit_ok,
            "actual_over_estimate_min": round(min(ratios), 4) if ratios else None,
            "actual_over_estimate_max": round(max(ratios), 4) if ratios else None,
            "provider_overage_usd": str(overage),
            "limit_usd": str(cbudget.hard_limit),
            "spent_usd": str(status.spent),
            "reserved_usd": str(status.reserved),
            "wall_s": round(concurrent_s, 3),
        },
        "target": "overhead_p95_ms <= 5 and overspend == 0",
        "target_met": _percentile(overhead_s, 0.95) * 1000 <= 5 and overspend == 0,
        "database": connection.vendor,
        "database_server": connection.cursor().connection.info.server_version
        if connection.vendor == "postgresql"
        else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, type=Path, help="write the results here")
    parser.add_argument("--requests", type=int, default=500, help="paired requests in the overhead phase")
    parser.add_argument("--concurrent", type=int, default=200, help="requests in the concurrent phase")
    parser.add_argument("--threads", type=int, default=24)
    parser.add_argument("--fits", type=int, default=50, help="how many concurrent requests the budget fits")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    _ensure_database(url)
    _setup_django(url)
    result = run(
        requests=args.requests,
        concurrent=args.concurrent,
        threads=args.threads,
        fits=args.fits,
        warmup=args.warmup,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, newline=True)
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] and result["concurrent"]["fit_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
