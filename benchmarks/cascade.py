"""A cascade (cheap tier first, escalate when a learned scorer doubts the answer) against each single tier.

    .venv/bin/python -m benchmarks.cascade --dataset /work/shared/data/nq-open-oracle --limit 40 \\
        --collect-only --json var/bench/cascade.json   # rows: var/bench/cascade-nq-open-oracle.rows.jsonl
    .venv/bin/python -m benchmarks.cascade --dataset /work/shared/data/hotpotqa-dev-distractor-sample100 \\
        --limit 40 --collect-only --json var/bench/cascade.json
    .venv/bin/python -m benchmarks.cascade --from-rows var/bench/cascade-nq-open-oracle.rows.jsonl \\
        --from-rows var/bench/cascade-hotpotqa-dev-distractor-sample100.rows.jsonl \\
        --json var/bench/cascade.json  # both, pooled scorer
    # add --without-logprob to evaluate the same rows with the answers' log-probabilities hidden (an ablation)

Every tier answers every question through the real pipeline (``benchmarks.rag_qa``'s machinery:
ingestion, ``query_run_start`` / ``query_run_execute``, the ledger's cost, the quality signals), and
its row is appended to ``<json stem>-<dataset>.rows.jsonl`` as soon as it is known: a rerun (same --json) only runs
what is missing. The cascade itself is then evaluated offline from those rows, as FrugalGPT does:
its answer is the first accepted tier's, its cost the sum of the tiers it tried.

Splits (disjoint, named): of the questions loaded (``--offset``, ``--limit``), the **fit split** is
the first half, the **report split** the second. The scorer (``workers.rag.cascade``: logistic
regression on the quality features, per tier) is fit on the fit split's rows of every dataset given
(pooled), its thresholds chosen on the fit split (``--accuracy-floor`` below the best single tier's
fit-split accuracy, cheapest thresholds meeting it), and everything reported is on the report split.

Tiers (defaults, all offline): ``extractive`` (the best supporting sentence of the top 5, no
generation), ``small-top3`` (SmolLM2-135M, dense top 3), ``small-super5`` (SmolLM2-135M,
superposition prompting over the top 5), ``strong-top10`` (SmolLM2-135M, dense top 10: no larger
model ships offline, see docs/cascades.md; with a remote endpoint configured, name it in --tiers).

JSON: ``{"tiers": {name: {contained, f1, cost_per_question, cost_of_pass}}, "cascade": {contained,
cost_per_question, cost_of_pass, tier_share: {name: share}}, "oracle_router": {...}, "targets": ...}``.
The oracle router answers with the cheapest tier that is right (the bound); its saving is against
the best single tier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import read_jsonl, write_json
from benchmarks.qa_metrics import contained, f1_score

DEFAULT_TIERS = [
    {"name": "extractive", "retriever": "dense", "top_k": 5, "prompting_strategy": "extractive_answer"},
    {"name": "small-top3", "retriever": "dense", "top_k": 3},
    {"name": "small-super5", "retriever": "dense", "top_k": 5, "prompting_strategy": "superposition"},
    {"name": "strong-top10", "retriever": "dense", "top_k": 10},
]


def _row(run: Any, task: dict, tier: str, dataset: str, index: int) -> dict:
    return {
        "dataset": dataset, "index": index, "tier": tier, "question": task["question"], "gold": task["answers"],
        "answer": run.answer, "status": run.status, "finish_reason": run.finish_reason,
        "contained": bool(contained(run.answer, task["answers"])), "f1": f1_score(run.answer, task["answers"]),
        "cost": str(run.cost), "latency_s": run.latency_ms / 1000,
        "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
        "quality_label": run.quality_label, "support": run.support, "support_score": run.support_score,
        "retrieval_confidence": run.retrieval_confidence, "citations_removed": run.citations_removed,
        "quality": {k: v for k, v in (run.quality or {}).items() if k != "sentences"},
    }


def collect(args: argparse.Namespace, tiers: list[dict], rows_path: Path) -> list[dict]:
    """Run every tier on every question not yet in ``rows_path`` (appending), return all rows."""
    from benchmarks import rag_qa

    done = read_jsonl(rows_path) if rows_path.exists() else []
    have = {(r["tier"], r["index"]) for r in done}
    dataset = args.dataset.name
    wanted = [(t, i) for i in range(args.offset, args.offset + args.limit) for t in tiers
              if (t["name"], i) not in have]
    if not wanted:
        return done
    with tempfile.TemporaryDirectory(prefix="parsimony-cascade-") as tmp_name:
        rag_qa._setup_django(Path(tmp_name))
        from apps.accounts.services import team_create
        from apps.rag.services import pipeline_save, query_run_execute, query_run_start

        _, tasks = rag_qa._load_tasks(args.dataset, args.limit, args.offset)
        team = team_create(name="bench")
        corpora = rag_qa._corpora(team, tasks)
        pipelines: dict[tuple[str, str], Any] = {}
        for tier in tiers:
            values = {**rag_qa.CONFIG_DEFAULTS, **{k: v for k, v in tier.items() if k != "name"}}
            model = values.pop("model")
            for key, corpus in corpora.items():
                pipelines[tier["name"], key] = pipeline_save(
                    team=team, name=f"{tier['name']}-{len(pipelines)}"[:120], model_endpoint=model,
                    corpora=[corpus], **values,
                )
        with rows_path.open("a") as out:
            # Question-major: a partial run has every tier of the questions it reached.
            for position, task in enumerate(tasks):
                index = args.offset + position
                for tier in tiers:
                    if (tier["name"], index) in have:
                        continue
                    run = query_run_start(team=team, pipeline=pipelines[tier["name"], task["corpus"]],
                                          question=task["question"])
                    run = query_run_execute(query_run_id=run.pk) or run
                    run.refresh_from_db()
                    row = _row(run, task, tier["name"], dataset, index)
                    done.append(row)
                    out.write(json.dumps(row, default=str) + "\n")
                    out.flush()
                    print(f"[{dataset} q{index} {tier['name']}] {run.latency_ms / 1000:.1f}s "
                          f"contained={row['contained']:d} {run.quality_label} {run.answer[:50]!r}", file=sys.stderr)
    return done


def _without_logprob(row: dict) -> dict:
    """The row with every name the scorer reads a log-probability from removed (row and quality dict)."""
    from workers.rag.cascade import LOGPROB_KEYS

    quality = {k: v for k, v in (row.get("quality") or {}).items() if k not in LOGPROB_KEYS}
    return {**{k: v for k, v in row.items() if k not in LOGPROB_KEYS}, "quality": quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, action="append", default=[])
    parser.add_argument("--from-rows", type=Path, action="append", default=[],
                        help="evaluate from rows files only (nothing generated)")
    parser.add_argument("--tiers", help="JSON list of tier configs, cheapest first (rag_qa config format)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--accuracy-slack", type=float, default=0.01,
                        help="the accuracy floor: the best single tier's fit-split accuracy minus this")
    parser.add_argument("--without-logprob", action="store_true",
                        help="evaluate with the answers' log-probabilities hidden from the scorer (an ablation)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    tiers = json.loads(args.tiers) if args.tiers else DEFAULT_TIERS
    rows: list[dict] = []
    for rows_file in args.from_rows:
        rows += read_jsonl(rows_file)
    for dataset in args.dataset:
        one = argparse.Namespace(**{**vars(args), "dataset": dataset})
        rows_path = args.json.with_name(f"{args.json.stem}-{dataset.name}.rows.jsonl")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        rows += collect(one, tiers, rows_path)
        print(f"{dataset.name}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if args.collect_only:
        return
    from benchmarks.cascade_report import report

    if args.without_logprob:
        rows = [_without_logprob(row) for row in rows]
    summary = report(rows, tier_names=[t["name"] for t in tiers] if args.tiers or not args.from_rows else None,
                     slack=args.accuracy_slack)
    summary["without_logprob"] = args.without_logprob
    summary["torch_threads"] = int(os.environ.get("PARSIMONY_TORCH_THREADS", "1"))
    write_json(args.json, summary)
    print(json.dumps(summary, indent=2, default=str))


__all__ = ["DEFAULT_TIERS", "Decimal", "collect", "main"]

if __name__ == "__main__":
    main()
