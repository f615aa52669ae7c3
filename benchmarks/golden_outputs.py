"""Golden outputs: every pipeline kind, a direct call and agent runs, through the services, for refactors.

A refactor that must not change behaviour records these at the commit before and after it and
diffs them with `benchmarks.golden_compare` (timings and device-second costs are left out):

    .venv/bin/python -m benchmarks.golden_outputs --out var/bench/golden-after.json
    .venv/bin/python -m benchmarks.golden_compare var/bench/golden-before.json var/bench/golden-after.json

Per question: answer, finish reason, token counts, context tokens before/after compression,
citations, and the ledger rows' stages and token counts, for naive (dense and hybrid), every
compression method, superposition and the three fixed-context attention backends, on the first
`--questions` NQ-open questions over their gold passages plus distractors; SmolLM2 on the CPU.
Set PARSIMONY_TEST_MODEL_CACHE to a folder holding converted weights to skip the conversion;
GOLDEN_ONLY=naive,agent runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, read_jsonl, setup_django

DATA = ROOT.parent / "shared" / "data" / "nq-open-oracle"


def setup(tmp: Path) -> None:
    os.environ["DATA_ROOT"] = str(tmp / "data")
    os.environ["PARSIMONY_VAR_DIR"] = str(tmp / "var")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'golden.sqlite3'}"
    os.environ["PARSIMONY_TORCH_THREADS"] = "1"
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    setup_django(migrate=True)


def ledger(**where) -> list[list]:
    from apps.costs.models import UsageRecord

    rows = UsageRecord.objects.filter(**where).order_by("pk")
    return [[r.stage, r.model_name, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.finish_reason]
            for r in rows]


CONFIGS: dict[str, dict] = {
    "naive": {},
    "hybrid": {"retriever": "hybrid"},
    "extractive": {"compression_method": "extractive", "compression_target": 0.5},
    "semantic_prune": {"compression_method": "semantic_prune", "compression_target": 0.5},
    "surprisal_prune": {"compression_method": "surprisal_prune", "compression_target": 0.5},
    "summarize": {"compression_method": "summarize", "compression_target": 0.5, "_limit": 1},
    "superposition": {"prompting_strategy": "superposition"},
    # The fixed context (a handbook made of the corpus' first passages) replaces retrieval.
    "fixed_full": {"attention_backend": "full", "_fixed": True, "_limit": 2},
    "fixed_squeezed": {"attention_backend": "squeezed", "_fixed": True, "_limit": 2},
    "fixed_retrieval": {"attention_backend": "retrieval", "_fixed": True, "_limit": 2},
}


def link_model_cache() -> None:
    """Reuse converted weights from the test-model cache (DATA_ROOT is a fresh tmp folder)."""
    from django.conf import settings

    cache = Path(os.environ.get("PARSIMONY_TEST_MODEL_CACHE") or ROOT / "var" / "test-models")
    if cache.exists():
        settings.DATA_ROOT.mkdir(parents=True, exist_ok=True)
        for child in cache.iterdir():
            target = settings.DATA_ROOT / child.name
            if not target.exists():
                target.symlink_to(child)


def build_corpus(team, n_questions: int) -> tuple:
    """The first n questions with gold passages; a corpus of their gold passages + 3 distractors each."""
    from apps.corpora.services import corpus_create, documents_import_records

    passages = {p["pid"]: p for p in read_jsonl(DATA / "passages.jsonl")}
    questions = [q for q in read_jsonl(DATA / "questions.jsonl") if q.get("gold_pids")][:n_questions]
    gold = [pid for q in questions for pid in q["gold_pids"]]
    others = [pid for pid in passages if pid not in set(gold)][: 3 * len(questions)]
    rows = [{"id": pid, "title": passages[pid]["title"], "text": passages[pid]["text"]}
            for pid in dict.fromkeys(gold + others)]
    corpus = corpus_create(team=team, name="golden")
    documents_import_records(corpus=corpus, filename="p.jsonl",
                             data="\n".join(json.dumps(r) for r in rows).encode(),
                             text_field="text", title_field="title", id_field="id")
    handbook = "\n\n".join(f"Title: {r['title']}\n{r['text']}" for r in rows[: 2 * len(questions)])
    return questions, corpus, handbook


def pipeline_outputs(team, corpus, handbook: str, questions: list[dict], config: dict, name: str) -> list[dict]:
    from apps.rag.models import QueryRun
    from apps.rag.services import pipeline_save, query_run_execute, query_run_start

    values = {"top_k": 3, "max_output_tokens": 24, **{k: v for k, v in config.items() if not k.startswith("_")}}
    if config.get("_fixed"):
        values["fixed_context"] = handbook
    pipeline = pipeline_save(team=team, name=name, model_endpoint="smollm2-135m-instruct",
                             corpora=[] if config.get("_fixed") else [corpus], **values)
    results = []
    for q in questions[: config.get("_limit", len(questions))]:
        run = query_run_start(team=team, pipeline=pipeline, question=q["question"])
        if not QueryRun.objects.get(pk=run.pk).is_finished:
            query_run_execute(query_run_id=run.pk)
        run = QueryRun.objects.get(pk=run.pk)
        results.append({
            "question": q["question"], "status": run.status, "error": run.error[:300], "answer": run.answer,
            "finish_reason": run.finish_reason, "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens, "cached_tokens": run.cached_tokens,
            "context_tokens": [run.context_tokens_before, run.context_tokens_after],
            "citations": [[c["n"], c["document_title"], c["start"], c["end"], c["cited"], c["score"]]
                          for c in run.citations],
            "ledger": ledger(query_run_id=run.pk),
        })
        print(name, json.dumps(results[-1])[:300], file=sys.stderr, flush=True)
    return results


def direct_outputs(team, question: str) -> list[dict]:
    """A chat sent to the model endpoint as it is (no pipeline)."""
    from apps.costs.models import ModelEndpoint
    from apps.rag.models import QueryRun
    from apps.rag.services import query_run_execute, query_run_start

    endpoint = ModelEndpoint.objects.get(name="smollm2-135m-instruct")
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
    run = query_run_start(team=team, endpoint=endpoint, messages=messages, max_output_tokens=24)
    query_run_execute(query_run_id=run.pk)
    run = QueryRun.objects.get(pk=run.pk)
    return [{"answer": run.answer, "finish_reason": run.finish_reason, "status": run.status,
             "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
             "ledger": ledger(query_run_id=run.pk)}]


def agent_outputs(team) -> list[dict]:
    """Two agent runs over the built-in tools with the real model: steps, tools, answer, ledger."""
    from apps.agents.models import AgentRun
    from apps.agents.services import agent_run_execute, agent_run_start, agent_save, builtin_tools_load

    builtin_tools_load()
    agent = agent_save(team=team, name="calc", model_endpoint="smollm2-135m-instruct", similarity_threshold=0.3)
    runs = []
    for request in ["What is the area of a rectangle 8 m long and 5 m wide?", "Add 17 and 25."]:
        run = agent_run_start(team=team, agent=agent, request=request)
        agent_run_execute(agent_run_id=run.pk)
        run = AgentRun.objects.get(pk=run.pk)
        runs.append({"request": request, "status": run.status, "answer": run.answer, "steps": run.steps,
                     "error": run.error[:300], "ledger": ledger(agent_run_id=run.pk)})
        print("agent", json.dumps(runs[-1])[:300], file=sys.stderr, flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=4)
    args = parser.parse_args()
    only = set(filter(None, os.environ.get("GOLDEN_ONLY", "").split(",")))
    out: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp_name:
        setup(Path(tmp_name))
        link_model_cache()
        from apps.accounts.services import team_create

        team = team_create(name="golden")
        questions, corpus, handbook = build_corpus(team, args.questions)
        for name, config in CONFIGS.items():
            if not only or name in only:
                out[name] = pipeline_outputs(team, corpus, handbook, questions, config, name)
        if not only or "direct" in only:
            out["direct"] = direct_outputs(team, questions[0]["question"])
        if not only or "agent" in only:
            out["agent"] = agent_outputs(team)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
