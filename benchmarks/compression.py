"""Context compression side by side: gold-answer retention at equal token budget.

    .venv/bin/python benchmarks/compression.py --dataset ../shared/data/hotpotqa-dev-distractor-sample100 \
        --targets 0.33 --method-limit summarize=10 --json var/bench/compression-hotpotqa.json
    .venv/bin/python benchmarks/compression.py --dataset ../shared/data/squad-v2-dev-sample --limit 150 \
        --methods truncation extractive --json var/bench/compression-squad.json

The definition follows shared/notes/anchors.md so the numbers compare with its baselines:
retention = share of examples whose normalised gold answer (SQuAD normalisation) is still a
substring of the compressed context, over the examples where it was in the full context;
tokens are counted with the SmolLM2 tokenizer on passage texts (titles are not counted and not
searched). Contexts: HotpotQA, all 10 paragraphs of each question in the file's (shuffled)
order; SQuAD-format datasets (squad-v2-dev-sample, nq-open-oracle), the answerable questions
with the gold paragraph plus 4 random other paragraphs, shuffled (seed 0).

Methods: the baselines `truncation` (the first N tokens of the concatenated context) and
`random_drop` (random sentences, seed 0, until the budget), then every registered compression
method (`none`, `extractive`, `semantic_prune`, `surprisal_prune`, `summarize`); a variant runs
under a label, e.g. `--methods surprisal_prune:pure --params '{"surprisal_prune:pure": {"fine_keep": null}}'`. Slow methods
can run on the first N examples only (`--method-limit summarize=10`); each row then also
carries `subset_retention` of every other method on exactly those examples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.qa_metrics import contained  # noqa: E402
from workers.compression.text import sentence_spans, token_budget  # noqa: E402
from workers.prompting.base import Passage  # noqa: E402

BASELINES = ("truncation", "random_drop")
DEFAULT_METHODS = ["truncation", "random_drop", "none", "extractive", "semantic_prune", "surprisal_prune", "summarize"]
DEFAULT_LIMITS = {"summarize": 10}


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_examples(dataset: Path, limit: int | None, distractors: int = 4, seed: int = 0) -> tuple[str, list[dict]]:
    """[{question, answers, passages: [Passage]}] for a HotpotQA-sample or SQuAD/NQ-format folder."""
    if (dataset / "questions_with_paragraphs.jsonl").exists():
        examples = []
        for row in _read_jsonl(dataset / "questions_with_paragraphs.jsonl"):
            passages = [
                Passage(chunk_id=n, title=p["title"], text="".join(p["sentences"]).strip())
                for n, p in enumerate(row["paragraphs"])
            ]
            examples.append({"id": row["qid"], "question": row["question"], "answers": [row["answer"]], "passages": passages})
        return "hotpotqa", examples[:limit]
    passages = {p["pid"]: p for p in _read_jsonl(dataset / "passages.jsonl")}
    pids = sorted(passages)
    rng = random.Random(seed)
    examples = []
    for q in _read_jsonl(dataset / "questions.jsonl"):
        if q.get("is_impossible") or not any(a.strip() for a in q.get("answers", [])) or not q.get("gold_pids"):
            continue  # unanswerable (SQuAD 2.0 lists [""]): no gold answer to retain
        gold = q["gold_pids"][0]
        others = rng.sample([pid for pid in pids if pid != gold], distractors)
        chosen = [gold, *others]
        rng.shuffle(chosen)
        examples.append(
            {
                "id": q["qid"],
                "question": q["question"],
                "answers": q["answers"],
                "passages": [
                    Passage(chunk_id=n, title=passages[pid].get("title", ""), text=passages[pid]["text"])
                    for n, pid in enumerate(chosen)
                ],
            }
        )
    return dataset.name, examples[:limit]


def context_text(passages: list[Passage]) -> str:
    return "\n\n".join(p.text for p in passages)


def truncation(passages: list[Passage], budget: int, tokenizer) -> str:
    ids = tokenizer.encode(context_text(passages), add_special_tokens=False)
    return tokenizer.decode(ids[:budget])


def random_drop(passages: list[Passage], budget: int, count_tokens, seed: int) -> list[str]:
    units = [(i, s) for i, p in enumerate(passages) for s in sentence_spans(p.text)]
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    keep, left = set(), budget
    for u in order:
        i, (a, b) = units[u]
        size = count_tokens(passages[i].text[a:b])
        if size <= left:
            keep.add(u)
            left -= size
    kept = [[] for _ in passages]
    for u in sorted(keep):
        i, (a, b) = units[u]
        kept[i].append(passages[i].text[a:b])
    return [" ".join(k) for k in kept if k]


def chunk_outcomes(passages: list[Passage], out) -> dict[str, int]:
    """Per input chunk: kept whole, partly kept (spans), rewritten (a summary: no spans), or dropped."""
    present = {p.chunk_id for p in out.passages}
    counts = {"whole": 0, "partial": 0, "rewritten": 0, "dropped": 0}
    for p in passages:
        spans = out.kept_spans.get(p.chunk_id, [])
        if p.chunk_id not in present:
            counts["dropped"] += 1
        elif not spans:
            counts["rewritten"] += 1
        elif spans == [(0, len(p.text))]:
            counts["whole"] += 1
        else:
            counts["partial"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="examples (default: all)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--targets", "--target", nargs="+", type=float, default=[0.33], dest="targets")
    parser.add_argument("--method-limit", action="append", default=[], metavar="METHOD=N",
                        help="run METHOD on the first N examples only (default: summarize=10)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--model-cache", type=Path, default=Path(os.environ.get("PARSIMONY_MODEL_CACHE_DIR", ROOT / "var" / "test-models")))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="an on-disk compression cache for the methods (default: none, every call cold)")
    parser.add_argument("--passes", type=int, default=1,
                        help="run every method this many times; with --cache-dir the later passes are warm")
    parser.add_argument("--params", default="{}", help='JSON {method: {param: value}} passed to the method constructors')
    args = parser.parse_args()

    from workers.compression import CompressionCache, get_method
    from workers.compression.resources import Resources
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(args.threads)
    limits = dict(DEFAULT_LIMITS)
    for item in args.method_limit:
        name, _, n = item.partition("=")
        limits[name] = int(n)
    params = json.loads(args.params)

    dataset_kind, examples = load_examples(args.dataset, args.limit)
    lm = load_causal_lm("smollm2-135m-instruct", cache_dir=args.model_cache, device="cpu")
    tokenizer = lm.tokenizer

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    cache = CompressionCache(args.cache_dir) if args.cache_dir is not None else None
    resources = Resources(generator=lm, scorer=lm, model_cache_dir=args.model_cache, cache=cache)
    methods = {}
    for name in args.methods:
        if name not in BASELINES:
            # "surprisal_prune:pure" runs the registered method under another label, so variants
            # (with their own --params entry) can sit side by side.
            methods[name] = get_method(name.split(":")[0], resources=resources, **params.get(name, {}))
    # Warm the models up so the first example's latency is not the load time.
    resources.get_embedder().encode(["warm up"])

    full = []
    for ex in examples:
        counts = [count_tokens(p.text) for p in ex["passages"]]
        full.append({"tokens": sum(counts), "has_answer": bool(contained(context_text(ex["passages"]), ex["answers"]))})

    # per (method, target): list of per-example dicts
    def run_pass(name: str, target: float, n: int) -> list[dict]:
        """One pass of a method over the first n examples: per-example retention, kept share, time."""
        rows = []
        for k, ex in enumerate(examples[:n]):
            budget = token_budget(target, full[k]["tokens"])
            started = time.perf_counter()
            model_tokens = 0
            outcome = {}
            if name == "truncation":
                pieces = [truncation(ex["passages"], budget, tokenizer)]
            elif name == "random_drop":
                pieces = random_drop(ex["passages"], budget, count_tokens, seed=k)
            else:
                out = methods[name].compress(query=ex["question"], passages=ex["passages"], target=target,
                                             count_tokens=count_tokens)
                pieces = [p.text for p in out.passages]
                model_tokens = out.model_prompt_tokens + out.model_completion_tokens
                outcome = chunk_outcomes(ex["passages"], out)
            seconds = time.perf_counter() - started
            text = "\n\n".join(pieces)
            # Passage texts counted one by one, like tokens_before (the separators are the prompt's).
            after = sum(count_tokens(piece) for piece in pieces)
            rows.append({
                "id": ex["id"], "seconds": seconds, "kept_share": after / max(full[k]["tokens"], 1),
                "retained": bool(contained(text, ex["answers"])), "has_answer": full[k]["has_answer"],
                "model_tokens": model_tokens, "over_budget": after > budget * 1.02 + 2, "chunks": outcome,
            })
            print(f"[{name} @{target}] {k + 1}/{n} kept={rows[-1]['kept_share']:.2f} "
                  f"retained={rows[-1]['retained']} {seconds:.2f}s", file=sys.stderr)
        return rows

    results: dict[tuple[str, float], list[dict]] = {}
    cold: dict[tuple[str, float], list[float]] = {}
    for target in args.targets:
        for name in args.methods:
            n = min(len(examples), limits.get(name, len(examples)))
            for pass_no in range(args.passes):
                if pass_no == 1:  # with --cache-dir, later passes read what the first one cached
                    cold[(name, target)] = [r["seconds"] for r in results[(name, target)]]
                results[(name, target)] = run_pass(name, target, n)

    def retention(rows: list[dict], ids: set[str] | None = None) -> float | None:
        pool = [r for r in rows if r["has_answer"] and (ids is None or r["id"] in ids)]
        return round(sum(r["retained"] for r in pool) / len(pool), 4) if pool else None

    table = []
    for (name, target), rows in results.items():
        ids = {r["id"] for r in rows}
        kept = statistics.mean(r["kept_share"] for r in rows)
        row = {
            "method": name,
            "target": target,
            "n": len(rows),
            "n_with_answer": sum(r["has_answer"] for r in rows),
            "answer_retention": retention(rows),
            "kept_share": round(kept, 4),
            "token_reduction": round(1 - kept, 4),
            "over_budget": sum(r["over_budget"] for r in rows),
            "latency_ms_p50": round(1000 * statistics.median(r["seconds"] for r in rows), 1),
            "latency_ms_mean": round(1000 * statistics.mean(r["seconds"] for r in rows), 1),
            # Only with --passes > 1: the first pass's latency (the rows above are the last pass).
            **({"latency_ms_p50_first_pass": round(1000 * statistics.median(cold[(name, target)]), 1)}
               if (name, target) in cold else {}),
            "model_tokens_mean": round(statistics.mean(r["model_tokens"] for r in rows), 1),
        }
        if any(r["chunks"] for r in rows):
            # What happened to the chunks, summed over examples (see chunk_outcomes).
            row["chunks"] = {k: sum(r["chunks"].get(k, 0) for r in rows) for k in ("whole", "partial", "rewritten", "dropped")}
        if len(rows) < len(examples):
            row["subset_retention"] = {
                other: retention(other_rows, ids)
                for (other, other_target), other_rows in results.items()
                if other_target == target and other != name
            }
        table.append(row)
    summary = {
        "dataset": args.dataset.name,
        "format": dataset_kind,
        "n": len(examples),
        "n_with_answer": sum(f["has_answer"] for f in full),
        "mean_context_tokens": round(statistics.mean(f["tokens"] for f in full), 1),
        "torch_threads": args.threads,
        "params": {name: getattr(m, "params", lambda: {})() for name, m in methods.items()},
        "rows": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(f"{'method':<22} {'target':>6} {'n':>4} {'retention':>9} {'kept':>6} {'p50 ms':>9} {'1st pass':>9}")
    for row in table:
        print(f"{row['method']:<22} {row['target']:>6} {row['n']:>4} {row['answer_retention']!s:>9} "
              f"{row['kept_share']:>6.3f} {row['latency_ms_p50']:>9.1f} {row.get('latency_ms_p50_first_pass', '')!s:>9}")


if __name__ == "__main__":
    main()
