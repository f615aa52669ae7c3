"""Batch prompting (k questions per prompt) against one question per prompt, on the local SmolLM2.

    .venv/bin/python -m benchmarks.bulk --dataset /work/shared/data/nq-open-oracle --limit 32 --json bulk.json
    .venv/bin/python -m benchmarks.bulk --dataset /work/shared/data/nq-open-oracle --limit 8 --ks 1,4 --json s.json

The engine alone (``workers.prompting.batch``, no Django, no database): each question of the nq-open-oracle
format (questions.jsonl with ``answers`` and ``gold_pids``, passages.jsonl) is asked with its own gold
passages, numbered as the naive prompt numbers them, k questions per prompt (k = 1 is the naive prompt
itself), greedy, output cap ``--max-tokens`` per question. The numbered answers are parsed back
(``parse_batch_answers``); a question whose answer does not parse is asked again alone (the bulk job's
fallback), and that call's tokens and seconds count against its k.

Reported per k: ``prompt_tokens_per_question`` (every call's prompt tokens, fallbacks included, over the
questions), ``completion_tokens_per_question``, ``seconds_per_question`` (wall time of the model calls),
``contained`` (the normalised gold answer appears in the normalised answer, ``benchmarks.qa_metrics``),
``exact_match``, ``fallback_rate`` (the share of questions whose batch answer did not parse), and
``prompt_tokens_vs_k1`` (the ratio to k = 1). Every answer goes to ``<json>.rows.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, read_jsonl, write_json
from benchmarks.qa_metrics import contained, exact_match


def _tasks(dataset: Path, limit: int, offset: int) -> list[dict]:
    passages = {p["pid"]: p for p in read_jsonl(dataset / "passages.jsonl")}
    tasks = []
    for question in read_jsonl(dataset / "questions.jsonl")[offset:]:
        gold = [passages[pid] for pid in question.get("gold_pids", []) if pid in passages]
        if gold:
            tasks.append({"qid": question["qid"], "question": question["question"], "answers": question["answers"],
                          "passages": gold})
        if len(tasks) >= limit:
            break
    return tasks


def _run_k(model, tasks: list[dict], k: int, max_tokens: int) -> tuple[dict, list[dict]]:
    from workers.prompting.base import Passage
    from workers.prompting.batch import BatchItem, build_batch_messages, parse_batch_answers
    from workers.runtime.meter import generate

    def ask(items: list[BatchItem]):
        messages = build_batch_messages(system_prompt="", items=items)
        started = time.perf_counter()
        result = generate(target=model, messages=messages, max_output_tokens=max_tokens * len(items),
                          wall_time_limit_s=600)
        return result, time.perf_counter() - started

    prompt = completion = 0
    seconds = 0.0
    rows: list[dict] = []
    for start in range(0, len(tasks), k):
        batch = tasks[start:start + k]
        items = [BatchItem(question=t["question"],
                           passages=[Passage(chunk_id=n, title=p["title"], text=p["text"])
                                     for n, p in enumerate(t["passages"])]) for t in batch]
        result, spent = ask(items)
        prompt, completion = prompt + result.prompt_tokens, completion + result.completion_tokens
        seconds += spent
        answers = parse_batch_answers(result.text, len(items))
        for task, item, answer in zip(batch, items, answers, strict=True):
            fallback = answer is None
            if fallback:
                alone, spent = ask([item])
                prompt, completion, seconds = (prompt + alone.prompt_tokens, completion + alone.completion_tokens,
                                               seconds + spent)
                answer = alone.text.strip()
            rows.append({"k": k, "qid": task["qid"], "question": task["question"], "answers": task["answers"],
                         "answer": answer, "fallback": fallback,
                         "contained": contained(answer, task["answers"]),
                         "exact_match": exact_match(answer, task["answers"])})
    n = len(tasks)
    return {
        "n_questions": n,
        "prompt_tokens_per_question": round(prompt / n, 1),
        "completion_tokens_per_question": round(completion / n, 1),
        "seconds_per_question": round(seconds / n, 3),
        "contained": round(statistics.fmean(r["contained"] for r in rows), 4),
        "exact_match": round(statistics.fmean(r["exact_match"] for r in rows), 4),
        "fallback_rate": round(sum(r["fallback"] for r in rows) / n, 4),
    }, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="an nq-open-oracle style folder")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0, help="skip the first questions (a held-out split)")
    parser.add_argument("--ks", default="1,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=24, help="output cap per question")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--model-cache", type=Path,
                        default=Path(os.environ.get("PARSIMONY_TEST_MODEL_CACHE") or ROOT / "var" / "models"))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    threads = set_torch_threads()
    model = load_causal_lm(args.model, cache_dir=args.model_cache, device="cpu")
    tasks = _tasks(args.dataset, args.limit, args.offset)
    ks = [int(k) for k in args.ks.split(",")]
    results: dict[str, dict] = {}
    all_rows: list[dict] = []
    for k in ks:
        results[str(k)], rows = _run_k(model, tasks, k, args.max_tokens)
        all_rows += rows
        print(f"k={k}: {json.dumps(results[str(k)])}", flush=True)
    if "1" in results:
        for figures in results.values():
            figures["prompt_tokens_vs_k1"] = round(
                figures["prompt_tokens_per_question"] / results["1"]["prompt_tokens_per_question"], 3)
            figures["contained_minus_k1"] = round(figures["contained"] - results["1"]["contained"], 4)
    report = {"dataset": str(args.dataset), "model": args.model, "n_questions": len(tasks), "offset": args.offset,
              "max_tokens_per_question": args.max_tokens, "torch_threads": threads, "k": results}
    write_json(args.json, report)
    args.json.with_suffix(".rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
