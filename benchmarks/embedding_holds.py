"""Embedding holds: hold / actual of the embedding cost paths, and why (tokens, seconds, safety factor).

    .venv/bin/python -m benchmarks.embedding_holds --json out/embedding_holds.json

Runs each embedding cost path a few times through its real entry point, in-process on PostgreSQL
(``DATABASE_URL``, default postgresql://postgres@127.0.0.1:5432/parsimony_embedding_holds): ingest
(a records file and a .txt upload), index_rebuild, search_ui, search_api (sequential, then
``--concurrent`` from 4 threads), embeddings_api, tool_index, tool_search. For every settled
reservation it splits hold / actual into three factors whose product it is:

- ``tokens``: the cost model's seconds for the tokens the hold assumed ÷ its seconds for the
  tokens the rows billed (how far the token bound is above the real count);
- ``safety``: SAFETY_FACTOR (1.5);
- ``model``: the cost model's seconds for the billed tokens ÷ the seconds billed (how far the
  throughput / per-call overhead in force over-predicts; below 1: the work ran slower than predicted).

The throughput in force is read once the run is over (``throughput_for``), so the split is
approximate where the profile changed during the run (measured on first use, refit every 20
calls); ``tokens`` compares with the tokens the rows bill (an ingestion row bills its chunks'
tokens without the special tokens and the batches' padding, which the hold counts). A hold that
grew (``Hold.ensure``) counts with its final estimate, the most it blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_jsonl, setup_django, write_json
from benchmarks.metering import _ensure_database, _percentile

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_embedding_holds"
DATA = ROOT.parent / "shared" / "data"
MODEL = "local/all-minilm-l6-v2"
PATHS = ("ingest", "index_rebuild", "search_ui", "search_api", "embeddings_api", "tool_index", "tool_search")


def _setup(tmp: Path) -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    data_root = tmp / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    os.environ["DATA_ROOT"] = str(data_root)
    os.environ.setdefault("PARSIMONY_VAR_DIR", str(tmp / "var"))
    os.environ.setdefault("PARSIMONY_TORCH_THREADS", "1")
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    setup_django(migrate=True)


def _forget_dead_processes() -> None:
    """Profiles left by earlier runs of this script on this host (their processes are gone) would still
    count as live for PARSIMONY_WORKER_PROFILE_TTL_S and bound this run's holds: drop them."""
    import socket

    from apps.costs.models import WorkerProfile

    host = socket.gethostname()
    for profile in WorkerProfile.objects.filter(hostname__startswith=f"{host}:"):
        pid = profile.hostname.rsplit(":", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            profile.delete()


def _workload(args) -> tuple[list[int], Any]:
    from django.test import Client
    from django.utils import timezone

    from apps.accounts.models import Role
    from apps.accounts.services import api_key_create, membership_set, team_create, user_create
    from apps.agents.services.tools import builtin_tools_load, tool_index_rebuild
    from apps.corpora.services import corpus_create, corpus_index_rebuild_start, documents_import_records
    from apps.costs.services import budget_save

    tag = uuid.uuid4().hex[:8]
    started_at = timezone.now()
    team = team_create(name=f"embedding-holds-{tag}")
    user = user_create(username=f"embedding-holds-{tag}", password="embedding-holds-password-unused")
    membership_set(team=team, user=user, role=Role.OWNER)
    key = api_key_create(
        team=team, name="bench", scopes=["read", "query", "ingest", "admin"], created_by=user
    ).raw_key
    budget_save(team=team, hard_limit=Decimal(50), period="total")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    web = Client()
    web.force_login(user)

    passages = read_jsonl(DATA / "squad-v2-dev-sample" / "passages.jsonl")[: args.passages]
    questions = [q["question"] for q in read_jsonl(DATA / "squad-v2-dev-sample" / "questions.jsonl")][:8]
    corpus = corpus_create(team=team, name=f"squad-{tag}")
    rows = [{"id": p["pid"], "title": p["pid"], "text": p["text"]} for p in passages]
    t0 = time.perf_counter()
    documents_import_records(
        corpus=corpus,
        filename="passages.jsonl",
        data="\n".join(json.dumps(r) for r in rows).encode(),
        text_field="text",
        title_field="title",
        id_field="id",
        user=user,
    )
    text = "\n\n".join(p["text"] for p in read_jsonl(DATA / "squad-v2-dev-sample" / "passages.jsonl")[-6:])
    response = api.post(
        f"/api/v1/corpora/{corpus.pk}/documents", {"file": _upload("notes.txt", text.encode())}
    )
    assert response.status_code == 201, response.content[:500]
    print(f"[embedding_holds] ingest {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    corpus_index_rebuild_start(corpus=corpus, user=user)
    for q in questions[:3]:
        assert web.get(f"/corpora/{corpus.pk}/", {"q": q}).status_code == 200
        response = api.post(
            f"/api/v1/corpora/{corpus.pk}/search", {"query": q, "k": 3}, content_type="application/json"
        )
        assert response.status_code == 200, response.content[:500]

    def one(i: int) -> int:
        from django.db import connections

        try:
            return (
                Client(HTTP_AUTHORIZATION=f"Bearer {key}")
                .post(
                    f"/api/v1/corpora/{corpus.pk}/search",
                    {"query": questions[i % len(questions)], "k": 3},
                    content_type="application/json",
                )
                .status_code
            )
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(one, range(args.concurrent)))
    assert all(s == 200 for s in statuses), statuses
    for texts in (questions[:4], questions[4:5]):
        response = api.post(
            "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": texts}, content_type="application/json"
        )
        assert response.status_code == 200, response.content[:500]
    builtin_tools_load(packs=["math"])
    tool_index_rebuild(team=team)
    response = api.post(
        "/api/v1/tools",
        {
            "name": f"rectangle-area-{tag}",
            "description": "The area of a rectangle from its length and width.",
            "config": {"callable": "area_rectangle"},
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content[:500]
    for query in ("area of a circle", "greatest common divisor", "convert degrees to radians"):
        assert web.get("/agents/tools/", {"q": query}).status_code == 200
    return [team.pk], started_at


def _upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="text/plain")


def _path_of(description: str) -> str:
    return description.split(":", 1)[0].strip()


def analyse(team_ids: list[int]) -> dict[str, Any]:
    from apps.costs.cost_model import SAFETY_FACTOR, _seconds, throughput_for
    from apps.costs.models import Reservation, ReservationStatus, UsageRecord
    from apps.costs.services import price_current

    price = price_current(model_name=MODEL)
    per_s = price.per_cpu_second
    speed = throughput_for(model=MODEL)
    out: dict[str, list[dict]] = {}
    for r in Reservation.objects.filter(team_id__in=team_ids, status=ReservationStatus.SETTLED, actual__gt=0):
        path = _path_of(r.description)
        if path not in PATHS:
            continue
        rows = list(UsageRecord.objects.filter(reservation=r))
        tokens = sum(row.prompt_tokens for row in rows)
        seconds = sum(float(row.cpu_seconds) + float(row.gpu_seconds) for row in rows)
        hold_s = float(r.estimate / per_s)
        predicted = _seconds(speed, tokens, 0)
        assumed = hold_s / SAFETY_FACTOR  # the cost model's seconds for the tokens the hold assumed
        out.setdefault(path, []).append(
            {
                "ratio": float(r.estimate / r.actual),
                "tokens_billed": tokens,
                "tokens_assumed": round((assumed - speed.overhead_s) * speed.prefill_tps),
                "seconds_billed": round(seconds, 4),
                "seconds_held": round(hold_s, 4),
                "calls": len(rows),
                "f_tokens": round(assumed / predicted, 3),
                "f_safety": SAFETY_FACTOR,
                "f_model": round(predicted / seconds, 3) if seconds else None,
            }
        )
    summary = {}
    for path in PATHS:
        items = out.get(path, [])
        if not items:
            continue

        def p50(key: str, items: list[dict] = items) -> float:
            return round(_percentile([i[key] for i in items if i[key] is not None], 0.5), 3)

        summary[path] = {
            "n": len(items),
            "ratio_p50": p50("ratio"),
            "ratio_p95": round(_percentile([i["ratio"] for i in items], 0.95), 3),
            "f_tokens_p50": p50("f_tokens"),
            "f_model_p50": p50("f_model"),
            "tokens_billed_p50": p50("tokens_billed"),
            "seconds_billed_p50": p50("seconds_billed"),
        }
    return {
        "throughput": {
            "prefill_tps": round(speed.prefill_tps, 1),
            "overhead_s": round(speed.overhead_s, 4),
            "device": speed.device,
        },
        "summary": summary,
        "reservations": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--passages", type=int, default=30, help="SQuAD paragraphs to ingest")
    parser.add_argument("--concurrent", type=int, default=12, help="REST searches from 4 threads")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parsimony-embedding-holds-") as tmp:
        _setup(Path(tmp))
        _forget_dead_processes()
        team_ids, _ = _workload(args)
        result = analyse(team_ids)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result, newline=True)
    print(json.dumps(result["throughput"]))
    for path, row in result["summary"].items():
        print(f"{path:15s} {json.dumps(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
