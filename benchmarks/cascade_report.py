"""The cascade benchmark's evaluation, from tier rows alone (``benchmarks/cascade.py`` writes them).

A question counts when every tier answered it. Per dataset, the first half of its complete
questions (by index) is the fit split, the second half the report split; the scorer is fit on the
fit split of every dataset pooled, its thresholds chosen there, and everything below is on the
report split (pooled, and per dataset under ``by_dataset``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from workers.rag.cascade import (
    cascade_decide,
    cascade_features,
    cascade_scorer_fit,
    prior_score,
)


def _questions(rows: list[dict], tiers: list[str]) -> dict[str, list[tuple[int, dict[str, dict]]]]:
    """{dataset: [(index, {tier: row})]} of questions every tier answered, by index."""
    table: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        table[row["dataset"], int(row["index"])][row["tier"]] = row
    out: dict[str, list[tuple[int, dict[str, dict]]]] = defaultdict(list)
    for (dataset, index), by_tier in sorted(table.items()):
        if all(t in by_tier for t in tiers):
            out[dataset].append((index, by_tier))
    return out


def _summary(answers: list[dict], costs: list[float]) -> dict[str, Any]:
    n = len(answers)
    contained = sum(a["contained"] for a in answers) / n
    cost = sum(costs) / n
    return {"n": n, "contained": round(contained, 4), "f1": round(sum(a["f1"] for a in answers) / n, 4),
            "cost_per_question": cost, "cost_of_pass": cost / contained if contained else "inf"}


def _evaluate(questions: list[dict[str, dict]], tiers: list[str], params: Any) -> dict[str, Any]:
    tier_report = {t: _summary([q[t] for q in questions], [float(q[t]["cost"]) for q in questions]) for t in tiers}
    answers, costs, share = [], [], dict.fromkeys(tiers, 0)
    prior_answers, prior_costs = [], []
    for q in questions:
        spent = 0.0
        for i, t in enumerate(tiers):
            spent += float(q[t]["cost"])
            if cascade_decide(params=params, tier=i, tiers=len(tiers), result=q[t]).accept:
                answers.append(q[t])
                costs.append(spent)
                share[t] += 1
                break
        spent = 0.0
        for i, t in enumerate(tiers):
            spent += float(q[t]["cost"])
            if cascade_decide(params=None, tier=i, tiers=len(tiers), result=q[t]).accept:
                prior_answers.append(q[t])
                prior_costs.append(spent)
                break
    cascade = {**_summary(answers, costs), "tier_share": {t: round(c / len(questions), 4) for t, c in share.items()}}
    oracle_answers, oracle_costs = [], []
    for q in questions:
        right = [t for t in tiers if q[t]["contained"]]
        pick = min(right or tiers, key=lambda t: float(q[t]["cost"]))
        oracle_answers.append(q[pick])
        oracle_costs.append(float(q[pick]["cost"]))
    oracle = _summary(oracle_answers, oracle_costs)
    best = max(tiers, key=lambda t: (tier_report[t]["contained"], -tier_report[t]["cost_per_question"]))
    b = tier_report[best]
    saving = b["cost_per_question"] - cascade["cost_per_question"]
    oracle_saving = b["cost_per_question"] - oracle["cost_per_question"]
    ratio = (cascade["cost_of_pass"] / b["cost_of_pass"]
             if isinstance(cascade["cost_of_pass"], float) and isinstance(b["cost_of_pass"], float) else None)
    targets = {
        "best_single_tier": best,
        "cost_of_pass_ratio": round(ratio, 4) if ratio is not None else None,
        "cost_of_pass_at_most_half": ratio is not None and ratio <= 0.5,
        "contained_delta_points": round(100 * (cascade["contained"] - b["contained"]), 2),
        "contained_within_1_point": cascade["contained"] >= b["contained"] - 0.01 - 1e-9,
        "oracle_saving_recovered": round(saving / oracle_saving, 4) if oracle_saving > 0 else None,
        "recovers_half_the_oracle_saving": oracle_saving > 0 and saving / oracle_saving >= 0.5,
    }
    # FrugalGPT's comparison: against always calling the dearest tier (the "strong model").
    dear = max(tiers, key=lambda t: tier_report[t]["cost_per_question"])
    d = tier_report[dear]
    dear_saving = d["cost_per_question"] - oracle["cost_per_question"]
    targets["vs_dearest_tier"] = {
        "tier": dear,
        "cost_of_pass_ratio": (round(cascade["cost_of_pass"] / d["cost_of_pass"], 4)
                               if isinstance(cascade["cost_of_pass"], float) and isinstance(d["cost_of_pass"], float)
                               else None),
        "contained_delta_points": round(100 * (cascade["contained"] - d["contained"]), 2),
        "oracle_saving_recovered": (round((d["cost_per_question"] - cascade["cost_per_question"]) / dear_saving, 4)
                                    if dear_saving > 0 else None),
    }
    return {"tiers": tier_report, "cascade": cascade, "cascade_unfitted": _summary(prior_answers, prior_costs),
            "oracle_router": oracle, "targets": targets}


def report(rows: list[dict], *, tier_names: list[str] | None = None, slack: float = 0.01) -> dict[str, Any]:
    tiers = tier_names or list(dict.fromkeys(r["tier"] for r in rows))
    by_dataset = _questions(rows, tiers)
    fit: list[dict] = []
    held: dict[str, list[dict[str, dict]]] = {}
    splits = {}
    for dataset, items in by_dataset.items():
        half = len(items) // 2
        fit_items, report_items = items[:half], items[half:]
        if not fit_items or not report_items:
            continue
        splits[dataset] = {
            "fit": f"questions {fit_items[0][0] + 1}-{fit_items[-1][0] + 1} ({len(fit_items)})",
            "report": f"questions {report_items[0][0] + 1}-{report_items[-1][0] + 1} ({len(report_items)})",
        }
        for index, by_tier in fit_items:
            for t in tiers:
                fit.append({**by_tier[t], "question": f"{dataset}:{index}", "tier": t,
                            "correct": bool(by_tier[t]["contained"]), "cost": float(by_tier[t]["cost"])})
        held[dataset] = [by_tier for _, by_tier in report_items]
    if not fit:
        raise SystemExit("not enough complete questions to fit and report (need 2 per dataset)")
    fit_accuracy = {t: sum(r["correct"] for r in fit if r["tier"] == t) / (len(fit) / len(tiers)) for t in tiers}
    floor = max(fit_accuracy.values()) - slack
    params = cascade_scorer_fit(fit, tier_names=tiers, tiers=len(tiers), accuracy_floor=floor)
    pooled = [q for items in held.values() for q in items]
    fit_auroc = {}
    from workers.rag.quality import auroc

    for i, t in enumerate(tiers[:-1]):
        tier_rows = [q[t] for q in pooled]
        fit_auroc[t] = {
            "scorer": auroc([params.tiers[i].score(cascade_features(r)) for r in tier_rows],
                            [bool(r["contained"]) for r in tier_rows]),
            "prior": auroc([prior_score(r) for r in tier_rows], [bool(r["contained"]) for r in tier_rows]),
        }
    return {
        "tier_order": tiers,
        "splits": splits,
        "scorer": {**params.as_dict(), "accuracy_floor": round(floor, 4),
                   "fit_accuracy_by_tier": {t: round(a, 4) for t, a in fit_accuracy.items()}},
        "report_split_auroc": fit_auroc,
        **_evaluate(pooled, tiers, params),
        "by_dataset": {d: _evaluate(items, tiers, params) for d, items in held.items()},
    }
