"""Superposition prompting vs naive RAG on the same questions, same model, same run (engine only).

    .venv/bin/python -m benchmarks.superposition --dataset ../shared/data/hotpotqa-dev-distractor-sample100 \\
        --json hp.json
    .venv/bin/python -m benchmarks.superposition --dataset ../shared/data/nq-open-oracle --docs 10 --limit 20 \\
        --json nq.json

Per question, in this order (interleaved, so machine noise hits every method alike):
1. naive: every passage in one prompt (workers.prompting.naive through the meter), greedy, ≤ 32 new tokens;
2. superposition, cold: an empty KV store: P and every document are computed during the query
   (and written to the store: this compute is the one-off precompute cost, reported apart);
3. superposition, warm: the same question again over the now-filled store: only the query
   copies, the answer node and the decode run.
Superposition keeps the top 2 paths with equalized positions by default.

Passages. HotpotQA distractor sample (questions_with_paragraphs.jsonl): each question's own 10
paragraphs, in the dataset's order (first --docs of them). nq-open-oracle (passages.jsonl +
questions.jsonl): a pool of the chosen questions' gold passages plus 5 distractors per question
(as benchmarks/rag_qa.py builds its corpus), the top --docs by MiniLM cosine per question.

Reported per method: EM / F1 / contained (benchmarks.qa_metrics), prompt tokens computed at
query time (cache hits excluded), estimated forward FLOPs, median time to first token and
total latency; speedups are naive / superposition medians. On the first --batching-probe
questions the warm query phase is also timed with both batching modes (flat vs batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, read_jsonl, write_json
from benchmarks.qa_metrics import contained, exact_match, f1_score


def load_tasks(dataset: Path, limit: int, docs: int, threads: int, offset: int = 0) -> tuple[str, list[dict]]:
    """[{question, answers, passages: [Passage]}] for `limit` questions from `offset` on."""
    from workers.prompting.base import Passage

    if (dataset / "questions_with_paragraphs.jsonl").exists():
        tasks = []
        for row in read_jsonl(dataset / "questions_with_paragraphs.jsonl")[offset:offset + limit]:
            passages = [
                Passage(chunk_id=n, title=p["title"], text="".join(p["sentences"]).strip())
                for n, p in enumerate(row["paragraphs"][:docs])
            ]
            gold = {pid for pid in row.get("gold_pids", [])}
            tasks.append({"question": row["question"], "answers": [row["answer"]], "passages": passages,
                          "gold": [n for n, p in enumerate(row["paragraphs"][:docs]) if p["pid"] in gold]})
        return "hotpotqa", tasks

    import numpy as np

    from workers.runtime.embedders import get_embedder

    pool = {p["pid"]: p for p in read_jsonl(dataset / "passages.jsonl")}
    questions = [q for q in read_jsonl(dataset / "questions.jsonl") if q.get("gold_pids")][offset:offset + limit]
    gold = [pid for q in questions for pid in q["gold_pids"]]
    others = [pid for pid in pool if pid not in set(gold)][: 5 * len(questions)]
    ids = list(dict.fromkeys(gold + others))
    embedder = get_embedder("all-MiniLM-L6-v2", threads=threads)
    vectors = embedder.encode([f"{pool[i]['title']}. {pool[i]['text']}" for i in ids])
    tasks = []
    for q in questions:
        scores = vectors @ embedder.encode_query(q["question"])
        top = [ids[i] for i in np.argsort(-scores, kind="stable")[:docs]]
        passages = [Passage(chunk_id=int(pid.rsplit("p", 1)[-1]), title=pool[pid]["title"], text=pool[pid]["text"])
                    for pid in top]
        tasks.append({"question": q["question"], "answers": q["answers"], "passages": passages,
                      "gold": [n for n, pid in enumerate(top) if pid in set(q["gold_pids"])]})
    return "nq", tasks


def forward_flops(config, *, tokens: int, logits: int, attended: int) -> float:
    """Forward FLOPs: 2 x (non-embedding weights) per token, 2 x vocab x d per logits row, and
    4 x layers x (heads x head dim) per attended (query, key) pair (QK^T and AV). Masked-out pairs
    are not counted (the flat batching mode computes and discards some)."""
    d, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads * head_dim
    weights = 2 * d * heads * head_dim + 2 * d * kv + 3 * d * config.intermediate_size  # q, o, k, v, MLP
    return 2 * weights * layers * tokens + 2 * config.vocab_size * d * logits + 4 * layers * heads * head_dim * attended


def _pairs(queries: int, past: int) -> int:
    """(query, key) pairs when `queries` causal tokens follow `past` visible ones."""
    return queries * past + queries * (queries + 1) // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions (to extend an earlier run)")
    parser.add_argument("--docs", type=int, default=10, help="passages per question (HotpotQA has 10)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--positions", default="equalized", choices=["equalized", "integer"])
    parser.add_argument("--answer-mode", default="superposed", choices=["superposed", "sequential", "recompute"],
                        help="what the answer node sees after pruning (workers/prompting/superposition.py)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--variants", default="",
                        help="extra warm superposition configs 'positions:k[:doc_weight[:answer_mode]]', "
                             "e.g. 'integer:2,equalized:1,equalized:all,equalized:2:0,equalized:2:1:recompute'")
    parser.add_argument("--gold-reference", action="store_true", help="also naive RAG over the gold passages only")
    parser.add_argument("--batching-probe", type=int, default=5, help="questions on which flat vs batch is timed")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    parser.add_argument("--model-cache", type=Path, default=ROOT / "var" / "test-models")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    from indexes.kv_store import KVStore
    from workers.prompting.naive import NaivePrompting
    from workers.prompting.superposition import SuperpositionConfig, SuperpositionPrompting, build_forkjoin
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads
    from workers.runtime.meter import generate

    set_torch_threads(args.threads)
    lm = load_causal_lm("smollm2-135m-instruct", cache_dir=args.model_cache, device="cpu")
    config = lm.model.config
    dataset_kind, tasks = load_tasks(args.dataset, args.limit, args.docs, args.threads, args.offset)
    sp_config = SuperpositionConfig(top_k=args.top_k, positions=args.positions, answer_mode=args.answer_mode)
    strategy = SuperpositionPrompting(sp_config)
    naive_strategy = NaivePrompting()
    variants = []
    for spec in filter(None, (v.strip() for v in args.variants.split(","))):
        positions, k, weight, mode = (spec.split(":") + ["", "", ""])[:4]
        top_k = None if k == "all" else int(k or args.top_k)
        doc_weight = float(weight) if weight else 1.0
        mode = mode or "superposed"
        variants.append((f"superposition-warm[{positions},k={k or args.top_k},w={doc_weight:g},{mode}]",
                         SuperpositionPrompting(SuperpositionConfig(top_k=top_k, positions=positions,
                                                                    doc_weight=doc_weight, answer_mode=mode))))
    rows: dict[str, list[dict]] = {"naive": [], "superposition-cold": [], "superposition-warm": []}
    precompute_s: list[float] = []
    probe: dict[str, list[float]] = {"flat": [], "batch": []}
    started_all = time.perf_counter()

    def score(text: str, answers: list[str]) -> dict:
        return {"em": exact_match(text, answers), "f1": f1_score(text, answers), "contains": contained(text, answers)}

    with tempfile.TemporaryDirectory(prefix="parsimony-sp-bench-") as tmp:
        for n, task in enumerate(tasks):
            question, answers, passages = task["question"], task["answers"], task["passages"]

            # 1. naive RAG through the meter
            first: list[float] = []
            t0 = time.perf_counter()
            messages = naive_strategy.build_messages(system_prompt="", question=question, passages=passages)
            naive = generate(target=lm, messages=messages, max_output_tokens=args.max_new_tokens, wall_time_limit_s=300,
                             on_token=lambda piece, first=first: first or first.append(time.perf_counter()))
            c = naive.completion_tokens
            rows["naive"].append({
                **score(naive.text, answers), "text": naive.text, "latency_s": naive.wall_s,
                "ttft_s": (first[0] - t0) if first else naive.wall_s, "query_prompt_tokens": naive.prompt_tokens,
                "completion_tokens": c,
                "flops": forward_flops(config, tokens=naive.prompt_tokens + c, logits=1 + c,
                                       attended=_pairs(naive.prompt_tokens, 0) + _pairs(c, naive.prompt_tokens)),
            })

            # 2. superposition, cold (empty store; fills it), then 3. warm, then warm variants
            store = KVStore(Path(tmp) / f"kv-{n}")
            prompt = build_forkjoin(lm.tokenizer, system_prompt="", question=question, passages=passages)
            for label, runner in [("superposition-cold", strategy), ("superposition-warm", strategy), *variants]:
                result = runner.generate(model=lm, system_prompt="", question=question, passages=passages,
                                         max_output_tokens=args.max_new_tokens, wall_time_limit_s=300, kv_store=store)
                c, n_p, n_q, n_a = result.completion_tokens, len(prompt.preamble), len(prompt.query), len(prompt.answer)
                if runner.config.answer_mode == "recompute":  # kept docs + q + A computed over P
                    n_in = sum(len(prompt.docs[i]) for i in result.kept) + n_q + n_a
                    kept_past, answer_pairs = n_p, _pairs(n_in, n_p)
                else:
                    n_in = n_a
                    kept_past = n_p + sum(len(prompt.docs[i]) + n_q for i in result.kept)
                    answer_pairs = _pairs(n_a, kept_past)
                attended = sum(_pairs(n_q, n_p + len(d)) for d in prompt.docs) + answer_pairs + \
                    _pairs(c, kept_past + n_in)
                logits = len(prompt.docs) * n_q + 1 + c
                if label == "superposition-cold":
                    attended += _pairs(n_p, 0) + sum(_pairs(len(d), n_p) for d in prompt.docs)
                    logits += n_p + sum(len(d) for d in prompt.docs)
                    precompute_s.append(result.timings["doc_compute_s"])
                rows.setdefault(label, []).append({
                    **score(result.text, answers), "text": result.text, "latency_s": result.wall_s,
                    "ttft_s": result.ttft_s, "query_prompt_tokens": result.fresh_prompt_tokens,
                    "cached_tokens": result.cached_tokens, "completion_tokens": c, "kept": result.kept,
                    "kept_gold": sorted(set(result.kept) & set(task["gold"])),
                    "flops": forward_flops(
                        config, tokens=result.fresh_prompt_tokens + c, logits=logits, attended=attended
                    ),
                    "timings": {k: round(v, 4) for k, v in result.timings.items()},
                })

            # the batching probe: the warm query phase, flat vs batch
            if n < args.batching_probe:
                for batching in ("flat", "batch", "flat", "batch"):
                    probe_strategy = SuperpositionPrompting(SuperpositionConfig(
                        top_k=args.top_k, positions=args.positions, query_batching=batching))
                    prepared = probe_strategy.prepare(model=lm, system_prompt="", question=question, passages=passages,
                                                      kv_store=store)
                    probe[batching].append(prepared.timings["query_s"])

            # reference: naive RAG over the gold passages only (where the dataset names them)
            if args.gold_reference and task["gold"]:
                gold_passages = [passages[i] for i in task["gold"]]
                messages = naive_strategy.build_messages(system_prompt="", question=question, passages=gold_passages)
                gold = generate(
                    target=lm, messages=messages, max_output_tokens=args.max_new_tokens, wall_time_limit_s=300
                )
                rows.setdefault("naive-gold-only", []).append(
                    {**score(gold.text, answers), "text": gold.text, "latency_s": gold.wall_s, "ttft_s": math.nan,
                     "query_prompt_tokens": gold.prompt_tokens, "completion_tokens": gold.completion_tokens,
                     "flops": math.nan})

            same = rows["superposition-cold"][-1]["text"] == rows["superposition-warm"][-1]["text"]
            print(f"{n + 1}/{len(tasks)} gold={answers[0]!r} naive={rows['naive'][-1]['contains']:.0f} "
                  f"sp={rows['superposition-warm'][-1]['contains']:.0f} kept={result.kept} gold_paths={task['gold']} "
                  f"cold==warm:{same} | {result.text[:60]!r}", file=sys.stderr)

    def summary(label: str) -> dict:
        rs = rows[label]
        if label == "naive-gold-only":
            return {"strategy": label, "docs": "gold", "n": len(rs),
                    **{m: round(statistics.mean(r[m] for r in rs), 4) for m in ("em", "f1", "contains")},
                    "query_prompt_tokens_mean": round(statistics.mean(r["query_prompt_tokens"] for r in rs), 1),
                    "latency_s_p50": round(statistics.median(r["latency_s"] for r in rs), 3)}
        out = {
            "strategy": label, "docs": args.docs, "n": len(rs),
            "em": round(statistics.mean(r["em"] for r in rs), 4),
            "f1": round(statistics.mean(r["f1"] for r in rs), 4),
            "contains": round(statistics.mean(r["contains"] for r in rs), 4),
            "query_prompt_tokens_mean": round(statistics.mean(r["query_prompt_tokens"] for r in rs), 1),
            "completion_tokens_mean": round(statistics.mean(r["completion_tokens"] for r in rs), 1),
            "ttft_s_p50": round(statistics.median(r["ttft_s"] for r in rs), 3),
            "latency_s_p50": round(statistics.median(r["latency_s"] for r in rs), 3),
            "flops_per_query": float(f"{statistics.mean(r['flops'] for r in rs):.4g}"),
        }
        if label != "naive":
            with_gold = [(r, t) for r, t in zip(rs, tasks, strict=True) if t["gold"]]
            out["kept_any_gold_path"] = round(statistics.mean(bool(r["kept_gold"]) for r, _ in with_gold), 4)
            out["kept_all_gold_paths"] = round(statistics.mean(
                len(r["kept_gold"]) == min(len(t["gold"]), args.top_k) for r, t in with_gold), 4)
        return out

    table = [summary(label) for label in rows]
    naive_row = table[0]
    speedup = {}
    for row in table[1:]:
        if row["strategy"] == "naive-gold-only":
            continue
        speedup[row["strategy"]] = {
            "latency_p50": round(naive_row["latency_s_p50"] / row["latency_s_p50"], 2),
            "ttft_p50": round(naive_row["ttft_s_p50"] / row["ttft_s_p50"], 2),
            "query_prompt_tokens": round(naive_row["query_prompt_tokens_mean"] / row["query_prompt_tokens_mean"], 2),
            "flops": round(naive_row["flops_per_query"] / row["flops_per_query"], 2),
        }
    gold_retrieved = [bool(t["gold"]) for t in tasks]
    result_json = {
        "dataset": args.dataset.name, "dataset_format": dataset_kind, "n": len(tasks), "offset": args.offset,
        "docs": args.docs,
        "model": lm.name, "torch_threads": args.threads,
        "superposition": {"top_k": args.top_k, "positions": args.positions, "query_batching": sp_config.query_batching,
                          "answer_mode": args.answer_mode},
        "rows": table,
        "speedup_vs_naive": speedup,
        "precompute_s": {"per_question_p50": round(statistics.median(precompute_s), 3),
                         "total": round(sum(precompute_s), 2)},
        "cold_equals_warm_answers": all(a["text"] == b["text"] for a, b in
                                        zip(rows["superposition-cold"], rows["superposition-warm"], strict=True)),
        "gold_passage_among_docs": round(statistics.mean(gold_retrieved), 4),
        "batching_probe_query_s_p50": {k: round(statistics.median(v), 4) for k, v in probe.items() if v},
        "wall_s": round(time.perf_counter() - started_all, 1),
        "per_question": [{"question": t["question"], "answers": t["answers"],
                          **{label: {k: v for k, v in rows[label][i].items() if k != "flops"}
                             for label in rows if label != "naive-gold-only"}}
                         for i, t in enumerate(tasks)],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result_json, ensure_ascii=False)
    print(json.dumps({k: v for k, v in result_json.items() if k != "per_question"}, indent=2))


if __name__ == "__main__":
    main()
