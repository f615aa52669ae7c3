"""Cost truth: one mixed workload on PostgreSQL, then the money checked from the database alone.

    .venv/bin/python -m benchmarks.cost_truth --json out/cost_truth.json
    .venv/bin/python -m benchmarks.cost_truth --json out/cost_truth.json --concurrent 200 --passages 40

The workload (tasks in-process, PARSIMONY_INPROCESS_SYNC=1; requests through the real views where a
user would send them) touches every cost path in ``apps.costs.cost_paths.COST_PATHS``: ingest a
small SQuAD 2.0 sample (../shared/data/squad-v2-dev-sample), rebuild its index, search it (UI and
REST), /v1/embeddings, index and search the built-in math tools, RAG with each pipeline kind on the
local SmolLM2 (naive, extractive_answer, extractive, semantic_prune, summarize, superposition,
fixed-context with its KV prefill) and on a fake OpenAI-compatible endpoint on loopback
(tests/support/fake_openai.py) that streams slowly and reports up to 2x the prompt tokens it read,
agents on both, /v1/chat/completions, ``apps.costs.metering.model_call`` reserving for itself, and a
concurrent phase (``--concurrent`` >= 100 cheap requests from ``--threads`` threads: REST searches,
remote calls through the API and through model_call, tiny local generations) against a budget that
binds. PARSIMONY_SHADOW_BASELINE defaults to 1.0 here, so every query also runs its naive baseline
for real (where implemented).

A monitor thread samples every budget window of the run's teams throughout (its own connection, so
it reads committed state). The metrics come from the ledger rows, reservations and windows:

- overspend_usd: max over windows and over time of (spent - hard limit - the window's overage rows),
  clipped at 0, plus the excess of every reservation whose actual > estimate without overage rows;
- provider_overage_usd: the sum of the overage rows (what endpoints reported beyond the bound);
- hold_over_actual_p50/p95: estimate / actual over settled reservations with actual > 0;
- paths_checked: the cost paths with at least one reservation and one ledger row in this run
  (a reservation's path: the ``<path>: ...`` prefix hold_open writes, else its legacy description);
- reconcile_differences: len(ledger_reconcile(since=run start)) (null when not available);
- savings: per pipeline kind, the claimed baseline vs the measured (shadow) one and its error
  (``apps.rag.selectors.savings_accuracy``; null where not available).

DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/parsimony_cost_truth (created when
missing, migrated). Models: PARSIMONY_TEST_MODEL_CACHE (a folder with models/, as the tests use) is
linked into a temporary DATA_ROOT; otherwise SmolLM2 is converted there first (slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_jsonl, setup_django, write_json
from benchmarks.metering import _ensure_database, _percentile

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_cost_truth"
# The shared data sets (../shared/data beside the checkout; PARSIMONY_SHARED_DATA from a worktree elsewhere).
DATA = Path(os.environ.get("PARSIMONY_SHARED_DATA") or ROOT.parent / "shared" / "data")
PRICES = DATA / "llm-prices" / "litellm-1.110.2_model_prices_and_context_window.json"
REMOTE_PRICE = "gpt-4o-mini"
LOCAL_MODEL = "smollm2-135m-instruct"
MAX_OUT = 12  # small answers: the run must fit ~15 min on 2 CPU cores
PIPELINE_KINDS: dict[str, dict[str, Any]] = {
    "naive": {},
    # Before "extractive": a run's kind is the first whose name its pipeline's name starts with (_kind).
    "extractive_answer": {"prompting_strategy": "extractive_answer"},
    "extractive": {"compression_method": "extractive", "compression_target": 0.5},
    "semantic_prune": {"compression_method": "semantic_prune", "compression_target": 0.5},
    "summarize": {"compression_method": "summarize", "compression_target": 0.5},
    "superposition": {"prompting_strategy": "superposition"},
}
# Descriptions written before every path went through hold_open (which prefixes "<path>: "):
# how to tell their reservations apart. The coordinator can drop these once all paths use holds.
LEGACY_DESCRIPTIONS = [
    (re.compile(r"^query on "), "query"),
    (re.compile(r"^agent "), "agent_step"),
    (re.compile(r"^embeddings on "), "embeddings_api"),
    (re.compile(r"^prefill of pipeline "), "kv_prefill"),
    (re.compile(r"^[\w-]+ on "), "model_call"),  # metering.model_call: "<stage> on <endpoint>"
]


# ---------------------------------------------------------------------------------------- setup


def _setup(tmp: Path) -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    data_root = tmp / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get("PARSIMONY_TEST_MODEL_CACHE")
    if cache and (Path(cache) / "models").is_dir():
        (data_root / "models").symlink_to(Path(cache).resolve() / "models")
    os.environ["DATA_ROOT"] = str(data_root)
    os.environ.setdefault("PARSIMONY_VAR_DIR", str(tmp / "var"))
    os.environ.setdefault("PARSIMONY_TORCH_THREADS", "1")
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ.setdefault("PARSIMONY_SHADOW_BASELINE", "1.0")
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    setup_django(migrate=True)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass
class Run:
    """What the workload set up: teams, users, keys, endpoints, corpora (the metrics only read the DB)."""

    tag: str
    started_at: Any
    team: Any = None
    user: Any = None
    key: str = ""
    race_team: Any = None
    operator_team: Any = None  # pays this run's shadow baselines (PARSIMONY_OPERATOR_TEAM, per run)
    race_user: Any = None
    race_key: str = ""
    corpus: Any = None
    remotes: dict[str, Any] = field(default_factory=dict)
    servers: list[Any] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.requests += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _client(run: Run, *, race: bool = False):
    from django.test import Client

    return Client(HTTP_AUTHORIZATION=f"Bearer {run.race_key if race else run.key}")


def _web_client(run: Run):
    from django.test import Client

    client = Client()
    client.force_login(run.user)
    return client


def _outcome(status: int) -> str:
    return "ok" if status < 400 else ("refused" if status == 402 else f"http_{status}")


# ---------------------------------------------------------------------------------------- workload


def step_setup(run: Run, args) -> None:
    from django.core.management import call_command

    from apps.accounts.models import Role
    from apps.accounts.services import api_key_create, membership_set, team_create, user_create
    from apps.costs.models import ModelEndpoint
    from apps.costs.services import budget_save
    from tests.support.fake_openai import FakeOpenAIServer

    call_command("import_prices", str(PRICES), "--only", REMOTE_PRICE, verbosity=0)
    run.team = team_create(name=f"cost-truth-{run.tag}")
    from django.conf import settings

    from apps.rag.shadow import operator_team

    settings.PARSIMONY_OPERATOR_TEAM = f"cost-truth-operator-{run.tag}"
    run.operator_team = operator_team()
    run.user = user_create(username=f"cost-truth-{run.tag}", password="cost-truth-password-unused")
    membership_set(team=run.team, user=run.user, role=Role.OWNER)
    scopes = ["read", "query", "ingest", "admin"]
    run.key = api_key_create(team=run.team, name="bench", scopes=scopes, created_by=run.user).raw_key
    # Generous windows: the point here is that every path reserves and settles, and never goes over.
    budget_save(team=run.team, hard_limit=Decimal(50), period="total")
    budget_save(team=run.team, scope="user", user=run.user, hard_limit=Decimal(40), period="total")

    over = FakeOpenAIServer(
        prompt_token_factor=2.0, chunk_delay_s=0.03, reply="The answer is " + "word " * 30, tokens_per_chunk=2
    )
    honest = FakeOpenAIServer(prompt_token_factor=1.0, chunk_delay_s=0.03, reply="A short honest answer.")
    for name, server in (("remote-over", over), ("remote-honest", honest)):
        server.__enter__()
        run.servers.append(server)
        run.remotes[name] = ModelEndpoint.objects.create(
            team=run.team,
            name=f"{name}-{run.tag}",
            kind="openai",
            base_url=server.base_url,
            remote_model=REMOTE_PRICE,
            price_name=REMOTE_PRICE,
            max_output_tokens=MAX_OUT,
        )
    passages = read_jsonl(DATA / "squad-v2-dev-sample" / "passages.jsonl")[: args.passages]
    pids = {p["pid"] for p in passages}
    run.questions = [
        q for q in read_jsonl(DATA / "squad-v2-dev-sample" / "questions.jsonl") if set(q["gold_pids"]) & pids
    ][args.first_question :]
    run.corpus_passages = passages  # type: ignore[attr-defined]


def step_ingest(run: Run, args) -> None:
    from apps.corpora.services import corpus_create, documents_import_records

    run.corpus = corpus_create(team=run.team, name=f"squad-{run.tag}")
    rows = [{"id": p["pid"], "title": p["pid"], "text": p["text"]} for p in run.corpus_passages]  # type: ignore[attr-defined]
    documents_import_records(
        corpus=run.corpus,
        filename="passages.jsonl",
        data="\n".join(json.dumps(r) for r in rows).encode(),
        text_field="text",
        title_field="title",
        id_field="id",
        user=run.user,
    )
    run.count("ok")


def step_index_rebuild(run: Run, args) -> None:
    from apps.corpora.services import corpus_index_rebuild_start

    corpus_index_rebuild_start(corpus=run.corpus, user=run.user)
    run.count("ok")


def step_searches(run: Run, args) -> None:
    web, api = _web_client(run), _client(run)
    for q in run.questions[:3]:
        run.count(_outcome(web.get(f"/corpora/{run.corpus.pk}/", {"q": q["question"]}).status_code))
        response = api.post(
            f"/api/v1/corpora/{run.corpus.pk}/search",
            {"query": q["question"], "k": 3},
            content_type="application/json",
        )
        run.count(_outcome(response.status_code))
    response = api.post(
        "/v1/embeddings",
        {"model": "all-MiniLM-L6-v2", "input": [q["question"] for q in run.questions[:4]]},
        content_type="application/json",
    )
    run.count(_outcome(response.status_code))


def step_tools(run: Run, args) -> None:
    from apps.agents.services.tools import builtin_tools_load, tool_index_rebuild

    builtin_tools_load(packs=["math"])
    tool_index_rebuild(team=run.team)
    run.count("ok")
    # A team's own tool is embedded into its index on the team's budget (built-in tools are global).
    response = _client(run).post(
        "/api/v1/tools",
        {"name": f"rectangle-area-{run.tag}", "description": "The area of a rectangle from its length and width.",
         "config": {"callable": "area_rectangle"}},
        content_type="application/json",
    )
    run.count(_outcome(response.status_code))
    web = _web_client(run)
    for query in ("area of a circle", "greatest common divisor", "convert degrees to radians"):
        run.count(_outcome(web.get("/agents/tools/", {"q": query}).status_code))


def _ask(run: Run, pipeline, question: str) -> str:
    from apps.core.errors import ServiceError
    from apps.rag.models import QueryRun
    from apps.rag.services import query_run_execute, query_run_start

    try:
        started = query_run_start(team=run.team, pipeline=pipeline, question=question, user=run.user)
    except ServiceError as exc:
        return "refused" if getattr(exc, "http_status", 0) == 402 else f"error: {exc}"
    if not QueryRun.objects.get(pk=started.pk).is_finished:
        query_run_execute(query_run_id=started.pk)
    status = QueryRun.objects.get(pk=started.pk).status
    return "ok" if status == "succeeded" else f"query_{status}"


def step_rag(run: Run, args) -> None:
    from apps.rag.services import pipeline_save

    base = {"retriever": "dense", "top_k": 3, "max_output_tokens": MAX_OUT}
    pipelines = {
        kind: pipeline_save(
            team=run.team,
            name=f"{kind.replace('_', '-')}-{run.tag}",
            model_endpoint=LOCAL_MODEL,
            corpora=[run.corpus],
            **{**base, **values},
        )
        for kind, values in PIPELINE_KINDS.items()
    }
    for name, endpoint in run.remotes.items():
        pipelines[name] = pipeline_save(
            team=run.team, name=f"{name}-{run.tag}", model_endpoint=endpoint, corpora=[run.corpus], **base
        )
    for kind, pipeline in pipelines.items():
        t0 = time.perf_counter()
        for q in run.questions[: args.questions]:
            run.count(_ask(run, pipeline, q["question"]))
        run.timings_s[f"rag_{kind}"] = round(time.perf_counter() - t0, 1)


def step_fixed_context(run: Run, args) -> None:
    from apps.rag.fixed_context import fixed_context_prefill_start
    from apps.rag.services import pipeline_save

    text = "\n\n".join(p["text"] for p in run.corpus_passages[:3])  # type: ignore[attr-defined]
    pipeline = pipeline_save(
        team=run.team,
        name=f"fixed-context-{run.tag}",
        model_endpoint=LOCAL_MODEL,
        fixed_context=text,
        max_output_tokens=MAX_OUT,
    )
    fixed_context_prefill_start(pipeline=pipeline, user=run.user)
    run.count("ok")
    t0 = time.perf_counter()
    for q in run.questions[: args.questions]:
        run.count(_ask(run, pipeline, q["question"]))
    run.timings_s["rag_fixed_context"] = round(time.perf_counter() - t0, 1)


def step_agents(run: Run, args) -> None:
    from apps.agents.models import AgentRun
    from apps.agents.services.agents import agent_save
    from apps.agents.services.runs import agent_run_execute, agent_run_start
    from apps.core.errors import ServiceError

    tasks = ["What is the area of a circle of radius 3?", "What is the greatest common divisor of 84 and 36?"]
    for label, endpoint in (("local", LOCAL_MODEL), ("remote", run.remotes["remote-over"])):
        agent = agent_save(
            team=run.team,
            name=f"agent-{label}-{run.tag}",
            model_endpoint=endpoint,
            top_k=3,
            max_depth=0,
            step_limit=2,
            max_output_tokens=MAX_OUT,
        )
        for task in tasks:
            try:
                started = agent_run_start(team=run.team, agent=agent, request=task, user=run.user)
            except ServiceError as exc:
                run.count("refused" if getattr(exc, "http_status", 0) == 402 else f"error: {exc}")
                continue
            if not AgentRun.objects.get(pk=started.pk).is_finished:
                agent_run_execute(agent_run_id=started.pk)
            run.count("ok" if AgentRun.objects.get(pk=started.pk).status == "succeeded" else "agent_failed")


def step_chat_completions(run: Run, args) -> None:
    api = _client(run)
    messages = [{"role": "user", "content": "Name one river in Europe."}]
    for model in (LOCAL_MODEL, *(e.name for e in run.remotes.values())):
        for stream in (False, True):
            response = api.post(
                "/v1/chat/completions",
                {"model": model, "messages": messages, "max_tokens": MAX_OUT, "stream": stream},
                content_type="application/json",
            )
            if stream and response.status_code == 200:
                b"".join(response.streaming_content)  # consume: the stream bills as it ends
            run.count(_outcome(response.status_code))


def _model_call(endpoint, context, question: str, *, stream: bool = False) -> str:
    from apps.costs.metering import model_call
    from apps.costs.services import BudgetExceeded

    try:
        model_call(
            endpoint=endpoint,
            messages=[{"role": "user", "content": question}],
            context=context,
            max_output_tokens=MAX_OUT,
            on_token=(lambda _piece: None) if stream else None,
        )
    except BudgetExceeded:
        return "refused"
    return "ok"


def step_model_calls(run: Run, args) -> None:
    """The metered call that reserves for itself, local and remote (the model_call path)."""
    from apps.costs.metering import endpoint_resolve
    from apps.costs.services import LedgerContext

    context = LedgerContext(team=run.team, user=run.user)
    local = endpoint_resolve(team=run.team, name=LOCAL_MODEL)
    for i, endpoint in enumerate((local, *run.remotes.values())):
        for q in run.questions[:2]:
            run.count(_model_call(endpoint, context, q["question"], stream=bool(i % 2)))


def step_concurrent(run: Run, args) -> None:
    """``--concurrent`` cheap requests from ``--threads`` threads against a budget that binds."""
    from django.db import connections

    from apps.accounts.models import Role
    from apps.accounts.services import api_key_create, membership_set, team_create, user_create
    from apps.costs.models import ModelEndpoint
    from apps.costs.services import LedgerContext, budget_save

    run.race_team = team_create(name=f"cost-truth-race-{run.tag}")
    run.race_user = user_create(username=f"cost-truth-race-{run.tag}", password="cost-truth-password-unused")
    membership_set(team=run.race_team, user=run.race_user, role=Role.MEMBER)
    run.race_key = api_key_create(
        team=run.race_team, name="race", scopes=["read", "query"], created_by=run.race_user
    ).raw_key
    remote = ModelEndpoint.objects.create(
        team=run.race_team,
        name=f"race-remote-{run.tag}",
        kind="openai",
        base_url=run.servers[0].base_url,
        remote_model=REMOTE_PRICE,
        price_name=REMOTE_PRICE,
        max_output_tokens=MAX_OUT,
    )
    from apps.corpora.services import corpus_create, documents_import_records

    corpus = corpus_create(team=run.race_team, name=f"race-{run.tag}")
    rows = [{"id": p["pid"], "text": p["text"]} for p in run.corpus_passages[:8]]  # type: ignore[attr-defined]
    documents_import_records(
        corpus=corpus,
        filename="p.jsonl",
        data="\n".join(json.dumps(r) for r in rows).encode(),
        text_field="text",
        id_field="id",
        user=run.race_user,
    )
    # Binds: a fraction of what the whole phase would cost if every call used its bound.
    budget_save(team=run.race_team, hard_limit=Decimal(args.race_limit_usd), period="total")
    rng = random.Random(23)
    questions = [q["question"] for q in run.questions] or ["What is this about?"]
    context = LedgerContext(team=run.race_team, user=run.race_user)

    def one(i: int) -> str:
        client = _client(run, race=True)
        question = questions[i % len(questions)]
        try:
            kind = i % 4
            if kind == 0:
                response = client.post(
                    f"/api/v1/corpora/{corpus.pk}/search",
                    {"query": question, "k": 3},
                    content_type="application/json",
                )
            elif kind == 2:  # the metered call that reserves for itself (apps.costs.metering.model_call)
                return _model_call(remote, context, question, stream=rng.random() < 0.5)
            else:
                model = LOCAL_MODEL if kind == 3 else remote.name
                stream = rng.random() < 0.5
                response = client.post(
                    "/v1/chat/completions",
                    {
                        "model": model,
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 4 if kind == 3 else MAX_OUT,
                        "stream": stream,
                    },
                    content_type="application/json",
                )
                if stream and response.status_code == 200:
                    b"".join(response.streaming_content)
            return _outcome(response.status_code)
        except Exception as exc:  # noqa: BLE001 - reported
            return f"error: {type(exc).__name__}: {exc}"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        for outcome in pool.map(one, range(args.concurrent)):
            run.count(outcome)


STEPS: list[tuple[str, Callable[[Run, Any], None]]] = [
    ("setup", step_setup),
    ("ingest", step_ingest),
    ("index_rebuild", step_index_rebuild),
    ("searches", step_searches),
    ("tools", step_tools),
    ("rag", step_rag),
    ("fixed_context", step_fixed_context),
    ("agents", step_agents),
    ("chat_completions", step_chat_completions),
    ("model_calls", step_model_calls),
    ("concurrent", step_concurrent),
]


# ---------------------------------------------------------------------------------------- monitor


class WindowMonitor(threading.Thread):
    """Samples (spent, reserved) of every budget window of the run's teams until stopped."""

    def __init__(self, team_ids: Callable[[], list[int]], every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.team_ids = team_ids
        self.every_s = every_s
        self.stop = threading.Event()
        self.peak_spent: dict[int, Decimal] = {}  # window id -> highest spent seen
        self.peak_committed: dict[int, Decimal] = {}  # window id -> highest spent + reserved seen
        self.samples = 0

    def run(self) -> None:
        from django.db import connections

        from apps.costs.models import BudgetWindow

        try:
            while not self.stop.is_set():
                ids = self.team_ids()
                for wid, spent, reserved in BudgetWindow.objects.filter(budget__team_id__in=ids).values_list(
                    "id", "spent", "reserved"
                ):
                    self.peak_spent[wid] = max(self.peak_spent.get(wid, spent), spent)
                    self.peak_committed[wid] = max(
                        self.peak_committed.get(wid, spent + reserved), spent + reserved
                    )
                self.samples += 1
                self.stop.wait(self.every_s)
        finally:
            connections.close_all()


# ---------------------------------------------------------------------------------------- metrics


def _path_of(description: str) -> str | None:
    from apps.costs.cost_paths import COST_PATHS

    head = description.split(":", 1)[0].strip()
    if head in COST_PATHS:
        return head
    if description.strip() in COST_PATHS:
        return description.strip()
    for pattern, path in LEGACY_DESCRIPTIONS:
        if pattern.search(description):
            return path
    return None


def _sum(queryset) -> Decimal:
    from django.db.models import Sum

    return queryset.aggregate(total=Sum("cost"))["total"] or Decimal(0)


def _window_rows(window):
    """The ledger rows a budget window counts: its scope's rows since its period started."""
    from apps.costs.models import BudgetScope, UsageRecord

    budget = window.budget
    rows = UsageRecord.objects.filter(team_id=budget.team_id, created_at__gte=window.period_start)
    if budget.scope == BudgetScope.USER:
        rows = rows.filter(user_id=budget.user_id)
    elif budget.scope == BudgetScope.API_KEY:
        rows = rows.filter(api_key_id=budget.api_key_id)
    return rows


def overspend_usd(team_ids: list[int], monitor: WindowMonitor) -> tuple[Decimal, dict]:
    from apps.costs.models import BudgetWindow, Reservation, ReservationStatus, Stage, UsageRecord

    worst = Decimal(0)
    windows = {}
    for window in BudgetWindow.objects.filter(budget__team_id__in=team_ids).select_related("budget"):
        overage = _sum(_window_rows(window).filter(stage=Stage.OVERAGE))
        peak = max(window.spent, monitor.peak_spent.get(window.pk, window.spent))
        over = max(Decimal(0), peak - window.budget.hard_limit - overage)
        worst = max(worst, over)
        windows[str(window.budget)] = {
            "hard_limit": str(window.budget.hard_limit),
            "spent": str(window.spent),
            "reserved": str(window.reserved),
            "peak_spent_plus_reserved": str(
                monitor.peak_committed.get(window.pk, window.spent + window.reserved)
            ),
            "overage_rows": str(overage),
            "rows": str(_sum(_window_rows(window))),
        }
    unexplained = Decimal(0)
    for r in Reservation.objects.filter(team_id__in=team_ids, status=ReservationStatus.SETTLED, actual__gt=0):
        if (
            r.actual > r.estimate
            and not UsageRecord.objects.filter(reservation=r, stage=Stage.OVERAGE).exists()
        ):
            unexplained += r.actual - r.estimate
    return worst + unexplained, windows


def hold_over_actual(team_ids: list[int]) -> list[float]:
    from apps.costs.models import Reservation, ReservationStatus

    settled = Reservation.objects.filter(team_id__in=team_ids, status=ReservationStatus.SETTLED, actual__gt=0)
    return [float(r.estimate / r.actual) for r in settled]


def hold_over_actual_by_path(team_ids: list[int]) -> dict[str, dict[str, float | int]]:
    """hold / actual per cost path: how many, p50, p95, max."""
    from apps.costs.models import Reservation, ReservationStatus

    ratios: dict[str, list[float]] = {}
    settled = Reservation.objects.filter(team_id__in=team_ids, status=ReservationStatus.SETTLED, actual__gt=0)
    for r in settled:
        ratios.setdefault(_path_of(r.description) or "?", []).append(float(r.estimate / r.actual))
    return {
        path: {"n": len(v), "p50": round(_percentile(v, 0.5), 2), "p95": round(_percentile(v, 0.95), 2),
               "max": round(max(v), 2)}
        for path, v in sorted(ratios.items())
    }


def paths_checked(team_ids: list[int]) -> tuple[list[str], dict[str, int]]:
    from apps.costs.models import Reservation, UsageRecord

    seen: dict[str, int] = {}
    with_rows = set(UsageRecord.objects.filter(team_id__in=team_ids).values_list("reservation_id", flat=True))
    for rid, description in Reservation.objects.filter(team_id__in=team_ids).values_list("id", "description"):
        path = _path_of(description)
        if path is not None and rid in with_rows:
            seen[path] = seen.get(path, 0) + 1
    return sorted(seen), seen


def reconcile_differences(since) -> int:
    """How many differences ``apps.costs.reconciliation.ledger_reconcile`` finds in what this run wrote."""
    from apps.costs.reconciliation import ledger_reconcile

    return len(ledger_reconcile(since=since))


def _kind(run: Run, name: str) -> str:
    kinds = (*PIPELINE_KINDS, "fixed-context", *run.remotes)
    return next((k for k in kinds if name.startswith(k.replace("_", "-"))), name)


def savings(run: Run) -> dict[str, Any]:
    """Per pipeline kind: the claimed baseline vs the measured (shadow) one and the error
    (``apps.rag.selectors.savings_accuracy`` over this run's team since the run started)."""
    from apps.rag.selectors import savings_accuracy

    out: dict[str, Any] = {}
    for name, row in savings_accuracy(team=run.team, since=run.started_at).items():
        out[_kind(run, name)] = {
            "claimed_baseline_usd": str(row["claimed_baseline_usd"]),
            "measured_baseline_usd": str(row["measured_baseline_usd"]),
            "error": None if row["error"] is None else round(float(row["error"]), 4),
            "runs": row["runs"],
            **_savings_tokens(run, name),
        }
    return out


def _savings_tokens(run: Run, pipeline_name: str) -> dict[str, int]:
    """Where a claimed baseline can part from the measured one, in tokens: the claim prices the
    naive prompt with the run's own output length; the shadow generates its own answer."""
    from django.db.models import Sum

    from apps.costs.models import Stage, UsageRecord
    from apps.rag.models import QueryRun

    runs = QueryRun.objects.filter(
        team=run.team, created_at__gte=run.started_at, pipeline__name=pipeline_name,
        measured_baseline_cost__isnull=False,
    )
    shadow = UsageRecord.objects.filter(
        shadow_of_query_run_id__in=runs.values("pk"), stage=Stage.GENERATE
    ).aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    own = runs.aggregate(completion=Sum("completion_tokens"))
    return {
        "completion_tokens_claimed": own["completion"] or 0,
        "completion_tokens_measured": shadow["completion"] or 0,
        "prompt_tokens_measured": shadow["prompt"] or 0,
    }


def measure(run: Run, monitor: WindowMonitor) -> dict[str, Any]:
    from apps.costs.cost_paths import COST_PATHS
    from apps.costs.models import Reservation, ReservationStatus, Stage, UsageRecord

    team_ids = [t.pk for t in (run.team, run.race_team, run.operator_team) if t is not None]
    overspend, windows = overspend_usd(team_ids, monitor)
    ratios = hold_over_actual(team_ids)
    checked, per_path = paths_checked(team_ids)
    overage = _sum(UsageRecord.objects.filter(team_id__in=team_ids, stage=Stage.OVERAGE))
    reservations = Reservation.objects.filter(team_id__in=team_ids)
    return {
        "requests": run.requests,
        "paths_checked": checked,
        "paths_missing": sorted(set(COST_PATHS) - set(checked)),
        "overspend_usd": str(overspend),
        "provider_overage_usd": str(overage),
        "hold_over_actual_p50": round(_percentile(ratios, 0.50), 3) if ratios else None,
        "hold_over_actual_p95": round(_percentile(ratios, 0.95), 3) if ratios else None,
        "reconcile_differences": reconcile_differences(run.started_at),
        "savings": savings(run),
        "detail": {
            "outcomes": run.outcomes,
            "reservations_per_path": per_path,
            "hold_over_actual_by_path": hold_over_actual_by_path(team_ids),
            "reservations": reservations.count(),
            "reservations_held": reservations.filter(status=ReservationStatus.HELD).count(),
            "ledger_rows": UsageRecord.objects.filter(team_id__in=team_ids).count(),
            "windows": windows,
            "monitor_samples": monitor.samples,
            "timings_s": run.timings_s,
        },
    }


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, type=Path, help="write the results here")
    parser.add_argument("--passages", type=int, default=30, help="SQuAD paragraphs to ingest")
    parser.add_argument("--questions", type=int, default=6, help="questions per pipeline kind")
    parser.add_argument(
        "--first-question", type=int, default=0,
        help="skip this many of the sample's questions (a split the cost model's design never saw: 6)",
    )
    parser.add_argument(
        "--concurrent", type=int, default=200, help="requests in the concurrent phase (>= 100)"
    )
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--race-limit-usd", default="0.0004", help="the concurrent team's hard limit")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip (e.g. fixed_context)")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    with tempfile.TemporaryDirectory(prefix="parsimony-cost-truth-") as tmp:
        _setup(Path(tmp))
        from django.db import connection
        from django.utils import timezone

        run = Run(tag=uuid.uuid4().hex[:8], started_at=timezone.now())
        monitor = WindowMonitor(
            lambda: [t.pk for t in (run.team, run.race_team, run.operator_team) if t is not None]
        )
        monitor.start()
        t_all = time.perf_counter()
        try:
            for name, step in STEPS:
                if name in skip:
                    continue
                t0 = time.perf_counter()
                step(run, args)
                run.timings_s[name] = round(time.perf_counter() - t0, 1)
                print(
                    f"[cost_truth] {name}: {run.timings_s[name]} s, {run.requests} requests so far",
                    file=sys.stderr,
                )
        finally:
            monitor.stop.set()
            monitor.join(timeout=10)
            for server in run.servers:
                server.__exit__(None, None, None)
        result = measure(run, monitor)
        result["detail"]["wall_s"] = round(time.perf_counter() - t_all, 1)
        result["detail"]["database"] = connection.vendor
        result["detail"]["python"] = platform.python_version()
        result["detail"]["cpus"] = os.cpu_count()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, newline=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
