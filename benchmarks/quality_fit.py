"""Fit the support score's logistic model (``workers.rag.quality.ScoreModel``) on saved rag_qa answers.

    .venv/bin/python -m benchmarks.quality_fit var/bench/nq-d1.rows.jsonl var/bench/nq-d2.rows.jsonl \\
        var/bench/hp-d1.rows.jsonl --report var/bench/nq-fresh.rows.jsonl var/bench/hp-held.rows.jsonl \\
        --grounding-cache var/bench/grounding.jsonl --model-cache-dir var/bench-data --json var/bench/quality-fit.json

Reads ``<json>.rows.jsonl`` files written by ``benchmarks/rag_qa.py``: the positional ones are the **design**
split (everything is chosen and fitted on them), ``--report`` the **report** split (only scored, with what
the design split chose). Files are grouped by dataset, the name's part before the first ``-`` (``nq-d1`` and
``nq-d2``: ``nq``). Computes each answer's signals as the service does (``answer_signals``) plus candidates
measured beside them, and prints: each signal's AUROC predicting ``contained`` per dataset and pooled, on
both splits; for each candidate combination the out-of-fold AUROC on the design split (stratified 5-fold,
median of ``--repeats`` shuffles); the **chosen** combination (the best worst-dataset out-of-fold AUROC, ties
to fewer signals), its coefficients fitted on the whole design split (scikit-learn, L2, C = ``--c``), and its
AUROC on the design split (in sample) and on the report split. The printed coefficients are what
``SCORE_MODEL`` ships.

The contrastive grounding signal (``workers.rag.grounding``) needs the answer scored after the question-only
prompt by the same local model: one short prefill per answer, cached in ``--grounding-cache`` (JSON lines
keyed by question, answer and whether it stopped) so a refit reads the file; with ``--model-cache-dir`` the
missing ones are computed (SmolLM2-135M, one torch thread), else they count as unknown.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
from pathlib import Path

from benchmarks.common import read_jsonl, write_json

# Every combination of these is tried on the design split (with the evidence always in).
CANDIDATES = ("misfit", "logprob_mean", "grounding_gain", "question_only_mean", "span_in_passages", "entity_overlap",
              "words")


def grounding_key(row: dict) -> str:
    text = json.dumps([row["question"], row["answer"], row["finish_reason"] == "stop"])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def question_only(rows: list[dict], cache_path: Path | None, model_cache_dir: Path | None) -> dict[str, list[float]]:
    """key -> the answer's token log-probabilities after the question-only prompt, from the cache file,
    missing ones computed (and appended to it) when a model cache is given."""
    cached: dict[str, list[float]] = {}
    if cache_path is not None and cache_path.exists():
        cached = {r["key"]: r["logprobs"] for r in read_jsonl(cache_path)}
    missing = [r for r in rows if grounding_key(r) not in cached and r["answer"].strip()]
    if missing and model_cache_dir is not None:
        from workers.rag.grounding import question_only_logprobs
        from workers.runtime.local_lm import load_causal_lm, set_torch_threads

        set_torch_threads(1)
        lm = load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu")
        for row in missing:
            key = grounding_key(row)
            if key in cached:
                continue
            scored = question_only_logprobs(lm, question=row["question"], answer=row["answer"],
                                            stopped=row["finish_reason"] == "stop")
            cached[key] = scored.logprobs
            if cache_path is not None:
                with cache_path.open("a") as out:
                    out.write(json.dumps({"key": key, "logprobs": scored.logprobs,
                                          "prompt_tokens": scored.prompt_tokens,
                                          "compute_s": round(scored.compute_s, 4)}) + "\n")
    return cached


def row_signals(row: dict, question_only_logprobs: list[float] | None = None) -> dict[str, float]:
    """A saved row's signals (``workers.rag.quality.answer_signals``) plus a few measured beside them."""
    from workers.rag.quality import answer_signals, split_sentences, token_overlap

    signals = answer_signals(
        question=row["question"], answer=row["answer"], sentences=row["sentences"],
        token_logprobs=row.get("token_logprobs") or None, passages=row.get("passages") or [],
        question_only_logprobs=question_only_logprobs,
    )
    logprobs = row.get("token_logprobs") or []
    return {
        "evidence": signals["evidence"],
        "logprob_mean": signals["logprob_mean"] if signals["logprob_mean"] is not None else -1.0,
        "logprob_min": min(logprobs) if logprobs else -5.0,
        "question_only_mean": (sum(question_only_logprobs) / len(question_only_logprobs)
                               if question_only_logprobs else -5.0),
        "grounding_gain": signals["grounding_gain"] if signals["grounding_gain"] is not None else 0.0,
        "span_in_passages": signals["span"],
        "entity_overlap": signals["entity_overlap"],
        "misfit": float(signals["fit"] == 0.0),
        "words": signals["words"],
        "first_from_top_passage": float(bool(row["sentences"]) and row["sentences"][0].get("passage") == 1),
        "top_passage_overlap": token_overlap(split_sentences(row["answer"])[0], row["passages"][0], row["question"])
        if row.get("passages") and split_sentences(row["answer"]) else 0.0,
        "finished": float(row["finish_reason"] == "stop"),
    }


def _load(paths: list[Path], config: str) -> tuple[list[dict], dict[str, list[int]]]:
    rows: list[dict] = []
    groups: dict[str, list[int]] = {}
    for path in paths:
        for row in read_jsonl(path):
            if row["config"] != config:
                continue
            groups.setdefault(path.name.split("-")[0], []).append(len(rows))
            rows.append(row)
    groups["pooled"] = list(range(len(rows)))
    return rows, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, nargs="+", help="rag_qa .rows.jsonl files of the design split")
    parser.add_argument("--report", type=Path, nargs="*", default=[], help=".rows.jsonl files of the report split")
    parser.add_argument("--config", default="naive-dense-top5")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic fit")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-signals", type=int, default=3, help="most candidate signals beside the evidence")
    parser.add_argument("--grounding-cache", type=Path, help="JSON lines of question-only log-probabilities")
    parser.add_argument("--model-cache-dir", type=Path, help="compute missing ones with the local SmolLM2 here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from workers.rag.quality import auroc

    design, design_groups = _load(args.rows, args.config)
    report, report_groups = _load(args.report, args.config)
    cache = question_only(design + report, args.grounding_cache, args.model_cache_dir)

    def signals_of(rows: list[dict]) -> list[dict[str, float]]:
        return [row_signals(r, cache.get(grounding_key(r))) for r in rows]

    design_signals, report_signals = signals_of(design), signals_of(report)
    y = np.array([r["contained"] > 0 for r in design])
    y_report = [r["contained"] > 0 for r in report]

    def by_group(scores: list[float], labels: list[bool], groups: dict[str, list[int]]) -> dict[str, float | None]:
        return {
            name: None if (a := auroc([scores[i] for i in idx], [labels[i] for i in idx])) is None else round(a, 4)
            for name, idx in groups.items()
        }

    def matrix(signals: list[dict[str, float]], names: tuple[str, ...]) -> np.ndarray:
        return np.array([[s[name] for name in names] for s in signals])

    def out_of_fold(names: tuple[str, ...]) -> dict[str, float | None]:
        x = matrix(design_signals, names)
        found: dict[str, list[float]] = {name: [] for name in design_groups}
        for seed in range(args.repeats):
            predicted = np.zeros(len(y))
            for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
                predicted[test] = LogisticRegression(C=args.c).fit(x[train], y[train]).decision_function(x[test])
            for name, value in by_group(list(predicted), list(y), design_groups).items():
                if value is not None:
                    found[name].append(value)
        return {name: round(statistics.median(v), 4) if v else None for name, v in found.items()}

    combos = [("evidence", *extra) for k in range(args.max_signals + 1)
              for extra in itertools.combinations(CANDIDATES, k)]
    oof = {combo: out_of_fold(combo) for combo in combos}
    datasets = [name for name in design_groups if name != "pooled"]

    def worst(combo: tuple[str, ...]) -> float:
        return min(oof[combo][name] or 0.0 for name in datasets)

    chosen = max(combos, key=lambda c: (worst(c), -len(c)))
    model = LogisticRegression(C=args.c).fit(matrix(design_signals, chosen), y)
    coefficients = {"intercept": round(float(model.intercept_[0]), 3),
                    **{name: round(float(c), 3) for name, c in zip(chosen, model.coef_[0], strict=True)}}
    ranked = sorted(combos, key=lambda c: (worst(c), -len(c)), reverse=True)
    result = {
        "n_design": {name: [len(idx), int(sum(y[i] for i in idx))] for name, idx in design_groups.items()},
        "n_report": {name: [len(idx), sum(y_report[i] for i in idx)] for name, idx in report_groups.items()},
        "signal_auroc_design": {name: by_group([s[name] for s in design_signals], list(y), design_groups)
                                for name in design_signals[0]},
        "signal_auroc_report": {name: by_group([s[name] for s in report_signals], y_report, report_groups)
                                for name in report_signals[0]} if report else {},
        "grounding_known": {"design": sum(grounding_key(r) in cache for r in design),
                            "report": sum(grounding_key(r) in cache for r in report)},
        "out_of_fold_top10": {"+".join(c): oof[c] for c in ranked[:10]},
        "out_of_fold_single": {"+".join(c): oof[c] for c in combos if len(c) <= 2},
        "chosen": "+".join(chosen),
        "coefficients": coefficients,
        "chosen_auroc_design_in_sample": by_group(list(model.decision_function(matrix(design_signals, chosen))),
                                                  list(y), design_groups),
        "chosen_auroc_design_out_of_fold": oof[chosen],
        "chosen_auroc_report": by_group(list(model.decision_function(matrix(report_signals, chosen))), y_report,
                                        report_groups) if report else {},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
