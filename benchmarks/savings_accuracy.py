"""Claimed vs measured naive baseline, per pipeline kind, with the real SmolLM2 on this machine.

    .venv/bin/python -m benchmarks.savings_accuracy --json out/savings_accuracy.json [--questions 5]

Imports a few SQuAD passages (../shared/data/squad-v2-dev-sample) into a corpus, runs each question
through three pipelines on the local SmolLM2-135M — naive, extractive compression, superposition —
with ``PARSIMONY_SHADOW_BASELINE=1`` (every query also runs the naive pipeline for real, billed to
the operator team), and reports ``apps.rag.selectors.savings_accuracy``: per pipeline the sum of
claimed baselines (exact tokens + the cost model's device-time estimate), the sum of measured ones
(the shadow runs' ledger rows), and error = claimed / measured - 1. Target: within ±10%.

--calibrate fits the cost model's throughput (overhead, prefill and decode tokens per second) to
timed generations of this model on this machine first, standing in for the per-worker
measurement of ``apps.costs.cost_model`` until it has one; without it the static defaults are used.

DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/parsimony_savings_bench (created when
missing, migrated); --model-cache is where the converted SmolLM2 lives (as for the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from decimal import Decimal
from pathlib import Path

from benchmarks.common import ROOT, setup_django, write_json
from benchmarks.metering import _ensure_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/parsimony_savings_bench"
DATA = ROOT.parent / "shared" / "data" / "squad-v2-dev-sample"
PIPELINES = {
    "naive": {},
    "extractive": {"compression_method": "extractive", "compression_target": 0.5},
    "superposition": {"prompting_strategy": "superposition"},
}


def _setup(url: str, data_root: Path, model_cache: Path) -> None:
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ["DATA_ROOT"] = str(data_root)
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ["PARSIMONY_SHADOW_BASELINE"] = "1"
    os.environ.pop("CELERY_BROKER_URL", None)
    (data_root / "models").symlink_to(model_cache / "models", target_is_directory=True)
    setup_django(migrate=True)


def _corpus(team, passages: int):
    from apps.corpora.models import DocumentStatus
    from apps.corpora.services import corpus_create, documents_import_records

    corpus = corpus_create(team=team, name="squad")
    lines = (DATA / "passages.jsonl").read_text(encoding="utf-8").splitlines()[:passages]
    documents_import_records(corpus=corpus, filename="passages.jsonl", data="\n".join(lines).encode(),
                             title_field="pid")
    ready = corpus.documents.filter(status=DocumentStatus.READY).count()
    if ready != passages:
        raise SystemExit(f"only {ready} of {passages} passages were ingested")
    return corpus


def _calibrate(samples: int = 12) -> dict:
    """Fit seconds = overhead + tokens_in / prefill_tps + tokens_out / decode_tps to timed generations of
    naive-sized prompts, and make the cost model use it (this process only)."""
    import numpy as np

    from apps.costs import cost_model
    from apps.costs.metering import endpoint_target
    from apps.costs.models import ModelEndpoint
    from workers.runtime.meter import generate

    target = endpoint_target(ModelEndpoint.objects.get(name="smollm2-135m-instruct", team=None))
    texts = [json.loads(line)["text"] for line in (DATA / "passages.jsonl").read_text().splitlines()[:samples]]
    # A first call pays one-off set-up (allocations, lazy initialisation) that no later call does.
    generate(target=target, messages=[{"role": "user", "content": texts[0]}], max_output_tokens=4,
             wall_time_limit_s=120)
    rows, seconds = [], []
    for n in range(len(texts)):
        context = " ".join(texts[n : n + 1 + n % 4])  # 1 to 4 passages: prompts of several lengths
        for max_out in (1, 24):
            result = generate(target=target, messages=[{"role": "user", "content": f"{context}\n\nSummarize."}],
                              max_output_tokens=max_out, wall_time_limit_s=120)
            rows.append([1.0, result.prompt_tokens, result.completion_tokens])
            seconds.append(result.gpu_s or result.compute_s)
    (overhead, per_in, per_out), *_ = np.linalg.lstsq(np.array(rows), np.array(seconds), rcond=None)
    speed = cost_model.Throughput(device=cost_model.DEFAULT_THROUGHPUT.device, prefill_tps=1 / max(per_in, 1e-6),
                                  decode_tps=1 / max(per_out, 1e-6), overhead_s=max(0.0, float(overhead)))
    cost_model.throughput_for = lambda *, model, queue="gpu": speed
    return {"samples": len(rows), "overhead_s": speed.overhead_s, "prefill_tps": speed.prefill_tps,
            "decode_tps": speed.decode_tps}


def _money(value: Decimal) -> str:
    return format(value, "f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-output-tokens", type=int, default=24)
    parser.add_argument("--model-cache", type=Path, default=Path(os.environ.get(
        "PARSIMONY_TEST_MODEL_CACHE", ROOT / "var" / "test-models")))
    parser.add_argument("--calibrate", action="store_true", help="fit the cost model to this machine first")
    parser.add_argument("--database-url", default=os.environ.get("SAVINGS_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    data_root = Path(tempfile.mkdtemp(prefix="savings-bench-"))
    _setup(args.database_url, data_root, args.model_cache.resolve())

    from django.db import transaction

    from apps.accounts.services import team_create
    from apps.costs import cost_model
    from apps.rag.models import QueryRun
    from apps.rag.selectors import savings_accuracy, savings_accuracy_overall
    from apps.rag.services import pipeline_save, query_run_start

    calibration = _calibrate() if args.calibrate else None
    team = team_create(name="savings-bench")
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()[: args.questions]]
    corpus = _corpus(team, passages=max(10, args.questions * 2))
    runs = []
    for name, options in PIPELINES.items():
        pipeline = pipeline_save(team=team, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                                 top_k=args.top_k, max_output_tokens=args.max_output_tokens, **options)
        for question in questions:
            with transaction.atomic():  # the query job runs (in-process) when this commits, then its shadow
                run = query_run_start(team=team, pipeline=pipeline, question=question["question"])
            run = QueryRun.objects.get(pk=run.pk)
            runs.append({
                "pipeline": name, "query_run_id": run.pk, "status": run.status, "cost": _money(run.cost),
                "claimed_baseline": _money(run.baseline_cost), "baseline_kind": run.baseline_kind,
                "measured_baseline": None if run.measured_baseline_cost is None else _money(run.measured_baseline_cost),
                "completion_tokens": run.completion_tokens, "latency_ms": run.latency_ms,
            })
            print(json.dumps(runs[-1]), flush=True)
    accuracy = {
        name: {**row, "claimed_baseline_usd": _money(row["claimed_baseline_usd"]),
               "measured_baseline_usd": _money(row["measured_baseline_usd"])}
        for name, row in savings_accuracy(team=team).items()
    }
    overall = savings_accuracy_overall(team=team)
    speed = cost_model.throughput_for(model="smollm2-135m-instruct")
    result = {
        "savings": accuracy,
        "overall": {**overall, "claimed_baseline_usd": _money(overall["claimed_baseline_usd"]),
                    "measured_baseline_usd": _money(overall["measured_baseline_usd"])},
        "cost_model": {"device": speed.device, "prefill_tps": speed.prefill_tps, "decode_tps": speed.decode_tps,
                       "overhead_s": speed.overhead_s, "calibration": calibration},
        "runs": runs,
        "settings": {"questions": args.questions, "top_k": args.top_k, "max_output_tokens": args.max_output_tokens,
                     "torch_threads": os.environ.get("PARSIMONY_TORCH_THREADS", "1")},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, newline=True)
    print(json.dumps({"savings": accuracy, "overall": result["overall"]}, indent=2))


if __name__ == "__main__":
    main()
