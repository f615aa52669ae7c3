"""Fit the support score's logistic model (``workers.rag.quality.ScoreModel``) on saved rag_qa answers.

    .venv/bin/python -m benchmarks.quality_fit var/bench/nq-d1.rows.jsonl var/bench/hp-d1.rows.jsonl \\
        --json var/bench/quality-fit.json

Reads ``<json>.rows.jsonl`` files written by ``benchmarks/rag_qa.py`` (the **design** questions only:
never the held-out ones), computes each answer's signals as the service does (``answer_signals``), and
prints: each signal's AUROC predicting ``contained`` per file and pooled; the logistic model's
coefficients (scikit-learn, L2, C = ``--c``) over the signals the service combines; the combined
score's AUROC in-sample and out-of-fold (stratified 5-fold, repeated ``--repeats`` times: what the fit
is worth on questions it did not see). The printed coefficients are what ``SCORE_MODEL`` ships.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import read_jsonl, write_json

COMBINED = ("evidence", "misfit")  # what SCORE_MODEL combines (ScoreModel's logprob weight ships as 0)
VARIANTS = (("evidence",), ("evidence", "logprob_mean", "misfit"), ("evidence", "logprob_first8", "misfit"),
            ("evidence", "top_passage_overlap", "misfit"))  # measured beside it


def row_signals(row: dict) -> dict[str, float]:
    """A saved row's signals (``workers.rag.quality.answer_signals``) plus a few measured beside them."""
    from workers.rag.quality import answer_signals, split_sentences, token_overlap

    signals = answer_signals(
        question=row["question"], answer=row["answer"], sentences=row["sentences"],
        token_logprobs=row.get("token_logprobs") or None,
    )
    logprobs = row.get("token_logprobs") or []
    return {
        "evidence": signals["evidence"],
        "logprob_mean": signals["logprob_mean"] if signals["logprob_mean"] is not None else -1.0,
        "logprob_min": min(logprobs) if logprobs else -5.0,
        "logprob_first8": sum(logprobs[:8]) / len(logprobs[:8]) if logprobs else -1.0,
        "misfit": float(signals["fit"] == 0.0),
        "words": float(len(row["answer"].split())),
        "first_from_top_passage": float(bool(row["sentences"]) and row["sentences"][0].get("passage") == 1),
        "top_passage_overlap": token_overlap(split_sentences(row["answer"])[0], row["passages"][0], row["question"])
        if row.get("passages") and split_sentences(row["answer"]) else 0.0,
        "finished": float(row["finish_reason"] == "stop"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, nargs="+", help="rag_qa .rows.jsonl files of the design questions")
    parser.add_argument("--config", default="naive-dense-top5")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic fit")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from workers.rag.quality import auroc

    groups: dict[str, list[int]] = {}
    signals: list[dict[str, float]] = []
    labels: list[bool] = []
    for path in args.rows:
        for row in read_jsonl(path):
            if row["config"] != args.config:
                continue
            groups.setdefault(path.name.split(".")[0], []).append(len(signals))
            signals.append(row_signals(row))
            labels.append(row["contained"] > 0)
    groups["pooled"] = list(range(len(signals)))

    def by_group(scores: list[float]) -> dict[str, float | None]:
        return {
            name: None if (a := auroc([scores[i] for i in idx], [labels[i] for i in idx])) is None else round(a, 4)
            for name, idx in groups.items()
        }

    per_signal = {name: by_group([s[name] for s in signals]) for name in signals[0]}
    y = np.array(labels)

    def fit(names: tuple[str, ...]) -> tuple[object, dict, dict]:
        """(the model fitted on every row, its in-sample AUROCs, the median out-of-fold AUROCs)."""
        x = np.array([[s[name] for name in names] for s in signals])
        model = LogisticRegression(C=args.c).fit(x, y)
        out_of_fold: dict[str, list[float]] = {name: [] for name in groups}
        for seed in range(args.repeats):
            predicted = np.zeros(len(y))
            for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
                predicted[test] = LogisticRegression(C=args.c).fit(x[train], y[train]).decision_function(x[test])
            for name, value in by_group(list(predicted)).items():
                if value is not None:
                    out_of_fold[name].append(value)
        median = {name: round(statistics.median(v), 4) if v else None for name, v in out_of_fold.items()}
        return model, by_group(list(model.decision_function(x))), median

    model, in_sample, out_of_fold = fit(COMBINED)
    report = {
        "n": {name: [len(idx), sum(labels[i] for i in idx)] for name, idx in groups.items()},
        "signal_auroc": per_signal,
        "coefficients": {"intercept": round(float(model.intercept_[0]), 3),  # type: ignore[attr-defined]
                         **{name: round(float(c), 3)
                            for name, c in zip(COMBINED, model.coef_[0], strict=True)}},  # type: ignore[attr-defined]
        "logprob_median": round(statistics.median(s["logprob_mean"] for s in signals), 3),
        "combined_auroc_in_sample": in_sample,
        "combined_auroc_out_of_fold_median": out_of_fold,
        "variants_out_of_fold_median": {"+".join(names): fit(names)[2] for names in VARIANTS},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
