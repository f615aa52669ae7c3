"""Full vs squeezed vs retrieval attention over the same cached long contexts, same model, same run.

    .venv/bin/python -m benchmarks.sparse_attention --dataset ../shared/data/leval-longdoc-qa --limit 2 \\
        --json attn.json
    .venv/bin/python -m benchmarks.sparse_attention --dataset ../shared/data/kv-retrieval-lost-in-the-middle \\
        --limit 1 --context-tokens 4096 --json kv.json

Per document and context length (the document truncated to --context-tokens of SmolLM2's
tokens, template included; the model has 8,192 positions: past that, --rope-factor 2 extends
them to 16,384 with YaRN, applied to the model itself, so to every method and every length of
the run alike):
1. the fixed context is prefilled once (chunked, full attention) into a fresh KV store (or the
   --store folder, kept across runs: a second run then skips the prefill): the one-off prefill
   cost, timed;
2. each method's index is built once (k-means centroids, key ANN indexes): the one-off build
   cost, timed;
3. per question, every method answers in turn (interleaved, so machine noise hits all alike),
   greedy, --max-new-tokens, timed; then again for --diagnostic-tokens steps with diagnostics
   on (untimed: they add a full attention per layer and step): per decoding step, layer and
   head, the attention-output cosine vs full attention given the same inputs, the share of full
   attention's mass on the attended keys (attn_recall), that mass over the mass full attention's
   own heaviest keys hold in a set of the same size (topk_mass_recall: 1.0 = the best selection
   the budget allows), and for retrieval the ANN's recall of the exact top-k.

Methods and budgets (--methods): `full`; `squeezed@B` (keep_fraction B of the clustered keys,
calibrated on the context's last tokens; the measured fraction adds 4 sinks + a 64-token
window); `retrieval@B` and `retrieval-<index>@B` (top_k = B * N minus the 36 static keys, so B
is the target share of keys; index aware unless named); any of them `+option=value` for more
backend options (e.g. `squeezed@0.1+dense_layers=2`). `full+kv_precision=bfloat16` is full
attention over the fixed KV rounded to bfloat16: the agreement floor a half-precision KV cache
sets, to read the sparse methods' agreement against (only plain `full` is the reference). Reported
per method, budget and length:
keys_fraction (measured, decoding), output_cosine, attn_recall, topk_mass_recall, ann_recall, answer_agreement
(token F1 of the answer vs full attention's answer), exact_agreement (identical answers),
accuracy (gold answer contained in the answer: weak for a 135M model, reported for
completeness), decode_ms_per_token (median step, wall) vs full's, decode_cpu_ms_per_token
(median step, CPU time of the process: what the step computed, not the time other processes held
the shared cores) vs full's, user_prefill_ms (the question's tokens over the cached context) vs
full's, and the one-off prefill / index build seconds.
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
from typing import Any

from benchmarks.common import ROOT, read_jsonl, write_json
from benchmarks.qa_metrics import contained, f1_score, normalize_answer

DEFAULT_METHODS = "full,squeezed@0.1,squeezed@0.25,retrieval@0.03,retrieval@0.1,retrieval-hnsw@0.03"
LEVAL_TASK_ORDER = ["natural_question", "scientific_qa", "quality", "multidoc_qa", "financial_qa", "tpo",
                    "coursera", "legal_contract_qa", "sci_fi", "paper_assistant"]


def load_documents(dataset: Path, limit: int, questions: int, min_tokens: int,
                   count_tokens: Any = None) -> tuple[str, list[dict]]:
    """[{doc_id, text, qas: [{question, answers}]}]: long documents first by task preference.

    L-Eval documents must hold at least `min_tokens` tokens: of the model's tokenizer when
    `count_tokens` is given (SmolLM2's tokenizer needs more tokens than cl100k for the same text),
    else of cl100k.
    """
    leval = dataset / "documents_with_questions.jsonl"
    if leval.is_file():
        if count_tokens is None:
            docs = [d for d in read_jsonl(leval) if d["n_tokens_cl100k"] >= min_tokens]
        else:  # cl100k counts first (cheap): only plausible documents are tokenized
            docs = [d for d in read_jsonl(leval) if d["n_tokens_cl100k"] >= min_tokens * 0.7
                    and count_tokens(d["text"]) >= min_tokens]
        docs.sort(key=lambda d: (LEVAL_TASK_ORDER.index(d["task"]) if d["task"] in LEVAL_TASK_ORDER else 99,
                                 d["doc_id"]))
        out = []
        for d in docs[:limit]:
            out.append({"doc_id": d["doc_id"], "text": d["text"],
                        "qas": [{"question": q["question"], "answers": [q["answer"]]} for q in d["qas"][:questions]]})
        return "leval-longdoc-qa", out
    files = sorted(dataset.glob("kv-retrieval-*_keys.jsonl.gz"))
    if not files:
        raise SystemExit(f"{dataset}: neither documents_with_questions.jsonl nor kv-retrieval-*_keys.jsonl.gz")
    out = []
    for ex in read_jsonl(files[-1])[:limit]:
        records = ex["ordered_kv_records"]
        text = "JSON data:\n" + json.dumps(dict(records), indent=1)
        # Keys spread over the first 40% of the records (derived questions, see SOURCE.md): the JSON
        # is truncated to --context-tokens, and UUIDs cost SmolLM2 many tokens.
        picks = [int(i * 0.4 * len(records) / questions) + 1 for i in range(questions)]
        qas = [{"question": f"What is the value associated with the key \"{records[i][0]}\"?",
                "answers": [records[i][1]]} for i in picks]
        out.append({"doc_id": ex["ex_id"], "text": text, "qas": qas})
    return "kv-retrieval-lost-in-the-middle", out


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_methods(spec: str, n_tokens: int) -> list[tuple[str, str, float | None, dict[str, Any]]]:
    """'full,squeezed@0.1,retrieval-hnsw@0.03' -> [(label, backend, budget, options)] for a context of n_tokens."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, *extra = item.split("+")  # "+key=value": more backend options (JSON values)
        name, _, budget_text = head.partition("@")
        budget = float(budget_text) if budget_text else None
        more = {k: _json_or_text(v) for k, _, v in (e.partition("=") for e in extra)}
        if name == "full":
            # "full+kv_precision=bfloat16": full attention over a rounded KV, a perturbation floor.
            out.append((item, "full", None, more))
        elif name.startswith("squeezed"):
            options: dict[str, Any] = {"keep_fraction": budget or 0.1}
            if name == "squeezed-hier":
                options["hierarchical"] = True
            out.append((item, "squeezed", budget, {**options, **more}))
        elif name.startswith("retrieval"):
            index = name.partition("-")[2] or "aware"
            static = more.get("sink", 4) + more.get("window", 32)
            top_k = max(1, round((budget or 0.03) * n_tokens) - static)
            out.append((item, "retrieval", budget, {"index": index, "top_k": top_k, **more}))
        else:
            raise SystemExit(f"unknown method {item!r} (full, squeezed@B, squeezed-hier@B, retrieval[-kind]@B, "
                             "each optionally +option=value)")
    return out


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=2, help="documents")
    parser.add_argument("--questions", type=int, default=2, help="questions per document")
    parser.add_argument("--context-tokens", default="2048,4096", help="comma-separated context lengths")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--diagnostic-tokens", type=int, default=4,
                        help="decoding steps observed for cosine / recall (a separate, untimed pass)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    parser.add_argument("--model-cache", type=Path, default=ROOT / "var" / "test-models")
    parser.add_argument("--rope-factor", type=float, default=1.0,
                        help="> 1: extend the model's positions by this factor (static RoPE scaling, every method)")
    parser.add_argument("--rope-type", default="yarn", help="yarn | linear (with --rope-factor)")
    parser.add_argument("--rope-attention-factor", type=float, default=1.0,
                        help="YaRN's attention temperature (transformers' default 0.1 ln(factor) + 1 garbles "
                             "SmolLM2's answers without fine-tuning; 1.0 keeps them)")
    parser.add_argument("--store", type=Path, default=None,
                        help="KV store folder kept across runs (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import faiss
    import torch

    from indexes.kv_store import KVStore
    from workers.attention import get_backend
    from workers.attention.base import Diagnostics
    from workers.attention.fixed_context import (
        FixedContextConfig,
        answer,
        build_context,
        clear_process_cache,
        ensure_context,
        ensure_index,
        max_positions,
    )
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(args.threads)
    faiss.omp_set_num_threads(1)
    lengths = [int(x) for x in args.context_tokens.split(",") if x.strip()]
    rope = None
    if args.rope_factor > 1:
        rope = {"rope_type": args.rope_type, "factor": args.rope_factor}
        if args.rope_type == "yarn":
            rope["attention_factor"] = args.rope_attention_factor
    lm = load_causal_lm("smollm2-135m-instruct", cache_dir=args.model_cache, device="cpu", rope_scaling=rope)
    dataset_name, documents = load_documents(
        args.dataset, args.limit, args.questions, min_tokens=max(lengths),
        count_tokens=lambda text: len(lm.tokenizer.encode(text, add_special_tokens=False)))
    if not documents:
        raise SystemExit(f"no document of {args.dataset} holds {max(lengths)} tokens")
    if max(lengths) + 256 > max_positions(lm):
        raise SystemExit(f"--context-tokens {max(lengths)} does not fit the model's {max_positions(lm)} positions")

    questions: list[dict] = []
    builds: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attn-bench-") as tmp_dir:
        tmp = args.store or tmp_dir
        for n_tokens in lengths:
            config = FixedContextConfig(max_context_tokens=n_tokens)
            methods = parse_methods(args.methods, n_tokens)
            for doc in documents:
                store = KVStore(Path(tmp) / f"kv-{n_tokens}", max_bytes=8 * 1024**3)
                clear_process_cache()
                prompt = build_context(lm.tokenizer, system_prompt="", context_text=doc["text"],
                                       max_positions=max_positions(lm), config=config)
                with lm.lock, torch.inference_mode():
                    ctx = ensure_context(lm, store, prompt.context_ids, config)
                    build = {"doc_id": doc["doc_id"], "context_tokens": len(prompt.context_ids),
                             "prefill_s": round(ctx.seconds, 3), "index_build_s": {}}
                    for label, backend, _, options in methods:
                        built = ensure_index(get_backend(backend, **options), ctx.value, store)
                        build["index_build_s"][label] = round(built.seconds, 3)
                builds.append(build)
                print(f"[{time.perf_counter() - started:6.0f}s] {doc['doc_id']} N={len(prompt.context_ids)} "
                      f"prefill {ctx.seconds:.1f}s builds {build['index_build_s']}", flush=True)
                for qa in doc["qas"]:
                    reference = None
                    for label, backend, budget, options in methods:
                        # Timed pass (answers, latencies), then a short pass with diagnostics (the same
                        # tokens: diagnostics only observe, but cost a full attention per layer and step).
                        result = answer(lm, store=store, system_prompt="", context_text=doc["text"],
                                        question=qa["question"], backend=backend, options=options,
                                        max_output_tokens=args.max_new_tokens, wall_time_limit_s=600, config=config)
                        if backend == "full" and not options:
                            reference = result.text
                            diag = {"attn_recall": 1.0, "topk_mass_recall": 1.0, "output_cosine": 1.0}
                        elif backend == "full":  # every key, rounded: no selection to diagnose
                            diag = {"attn_recall": 1.0, "topk_mass_recall": 1.0, "output_cosine": math.nan}
                        else:
                            diagnostics = Diagnostics()
                            answer(lm, store=store, system_prompt="", context_text=doc["text"],
                                   question=qa["question"], backend=backend, options=options,
                                   max_output_tokens=min(args.max_new_tokens, args.diagnostic_tokens),
                                   wall_time_limit_s=600, config=config, diagnostics=diagnostics)
                            diag = diagnostics.summary()
                        row = {
                            "doc_id": doc["doc_id"], "context_tokens": len(prompt.context_ids), "method": label,
                            "backend": backend, "budget": budget, "options": options, "answer": result.text,
                            "keys_fraction": result.keys_fraction,
                            "prefill_keys_fraction": result.prefill_keys_fraction,
                            "output_cosine": diag.get("output_cosine"), "attn_recall": diag.get("attn_recall"),
                            "topk_mass_recall": diag.get("topk_mass_recall"),
                            "ann_recall": diag.get("ann_recall", math.nan),
                            "answer_agreement": f1_score(result.text, [reference]) if reference is not None
                            else math.nan,
                            "exact_agreement": float(
                                normalize_answer(result.text) == normalize_answer(reference or "")
                            ),
                            "accuracy": contained(result.text, qa["answers"]),
                            "decode_ms_per_token": result.decode_ms_per_token,
                            "decode_cpu_ms_per_token": result.decode_cpu_ms_per_token,
                            "user_prefill_ms": 1000 * result.timings.get("user_prefill_s", math.nan),
                            "completion_tokens": result.completion_tokens,
                        }
                        questions.append(row)
                    print(f"[{time.perf_counter() - started:6.0f}s]   {qa['question'][:50]!r}: "
                          + " | ".join(f"{r['method']} {r['answer_agreement']:.2f} {r['keys_fraction']:.3f} "
                                       f"{r['decode_ms_per_token']:.0f}ms ({r['decode_cpu_ms_per_token']:.0f} cpu)"
                                       for r in questions[-len(methods):]), flush=True)

    rows = []
    for n_tokens in lengths:
        subset = [q for q in questions if abs(q["context_tokens"] - n_tokens) <= 16]
        full = [q for q in subset if q["backend"] == "full" and not q["options"]]
        full_decode = _median([q["decode_ms_per_token"] for q in full])
        full_cpu = _median([q["decode_cpu_ms_per_token"] for q in full])
        full_prefill = _median([q["user_prefill_ms"] for q in full])
        doc_builds = [b for b in builds if abs(b["context_tokens"] - n_tokens) <= 16]
        for label, _backend, budget, _ in parse_methods(args.methods, n_tokens):
            mine = [q for q in subset if q["method"] == label]
            decode = _median([q["decode_ms_per_token"] for q in mine])
            cpu = _median([q["decode_cpu_ms_per_token"] for q in mine])
            rows.append({
                "method": label.partition("@")[0]
                + ("+" + label.partition("+")[2] if "@" in label and "+" in label else ""),
                "budget": budget,
                "context_tokens": n_tokens,
                "questions": len(mine),
                "keys_fraction": _mean([q["keys_fraction"] for q in mine]),
                "output_cosine": _mean([q["output_cosine"] for q in mine]),
                "attn_recall": _mean([q["attn_recall"] for q in mine]),
                "topk_mass_recall": _mean([q["topk_mass_recall"] for q in mine]),
                "ann_recall": _mean([q["ann_recall"] for q in mine]),
                "answer_agreement": _mean([q["answer_agreement"] for q in mine]),
                "exact_agreement": _mean([q["exact_agreement"] for q in mine]),
                "accuracy": _mean([q["accuracy"] for q in mine]),
                "decode_ms_per_token": decode,
                "full_decode_ms_per_token": full_decode,
                "decode_speedup": full_decode / decode if decode else math.nan,
                "decode_cpu_ms_per_token": cpu,
                "full_decode_cpu_ms_per_token": full_cpu,
                "decode_cpu_speedup": full_cpu / cpu if cpu else math.nan,
                "user_prefill_ms": _median([q["user_prefill_ms"] for q in mine]),
                "full_user_prefill_ms": full_prefill,
                "prefill_s": _median([b["prefill_s"] for b in doc_builds]),
                "index_build_s": _median([b["index_build_s"].get(label, math.nan) for b in doc_builds]),
            })
    out = {
        "dataset": dataset_name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": lm.name,
        "rope_scaling": rope,
        "max_positions": max_positions(lm),
        "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "documents": [d["doc_id"] for d in documents],
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
        "builds": builds,
        "questions": questions,
    }
    write_json(args.json, out, indent=1, default=float)
    print(f"\n{'method':34s} {'budget':>6s} {'N':>5s} {'keys':>6s} {'cos':>6s} {'recall':>6s} {'top-m':>6s} "
          f"{'ann':>5s} {'agree':>6s} {'exact':>5s} {'acc':>4s} {'ms/tok':>7s} {'full':>6s} {'cpu ms':>7s} "
          f"{'full':>6s} {'build s':>7s}")
    for r in rows:
        print(f"{r['method']:34s} {r['budget'] or '-':>6} {r['context_tokens']:5d} {r['keys_fraction']:6.3f} "
              f"{r['output_cosine']:6.3f} {r['attn_recall']:6.3f} {r['topk_mass_recall']:6.3f} {r['ann_recall']:5.2f} "
              f"{r['answer_agreement']:6.2f} "
              f"{r['exact_agreement']:5.2f} {r['accuracy']:4.2f} {r['decode_ms_per_token']:7.1f} "
              f"{r['full_decode_ms_per_token']:6.1f} {r['decode_cpu_ms_per_token']:7.1f} "
              f"{r['full_decode_cpu_ms_per_token']:6.1f} {r['index_build_s']:7.1f}")
    print(f"wrote {args.json} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
