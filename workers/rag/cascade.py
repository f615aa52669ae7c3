"""A cascade's deferral scorer: after each tier, accept its answer or escalate to the next tier.

FrugalGPT's recipe on Parsimony's own signals. A tier's answer is described by the quality signals
the pipeline computed for it (``workers.rag.quality``: label, support, support score, retrieval
confidence, citation markers removed), its finish reason and length, and a per-answer token
log-probability when the run's ``quality`` dict carries one. One logistic regression per tier
(scikit-learn, fit on labelled rows) turns them into the probability the answer is right; the
tier's answer is accepted when that probability reaches the tier's threshold, the last tier's
always. Thresholds are chosen on the same labelled rows, by exhaustive search over a grid, either
to minimise the mean cost under an accuracy floor or to maximise accuracy under a mean-cost target.

Parameters are plain JSON (``ScorerParams.as_dict``): standardisation, coefficients, intercept and
threshold per tier; never a pickle. Scoring needs numpy only; scikit-learn is imported to fit.
No Django here: plain data in, plain data out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LABELS = ("grounded", "weak", "unsupported", "degenerate", "abstained")
# Names a per-answer mean token log-probability may carry in a run's ``quality`` dict (the first found is used;
# runs of the local model store ``answer_logprob_mean``).
LOGPROB_KEYS = ("answer_logprob_mean", "mean_logprob", "token_logprob", "logprob", "avg_logprob")
BASE_FEATURES = (
    *(f"label_{label}" for label in LABELS),
    "support", "support_missing", "support_score", "retrieval_confidence", "retrieval_confidence_missing",
    "citations_removed", "repetition", "answer_words_log",
)
LOGPROB_FEATURES = ("logprob", "logprob_missing")
GRID = tuple(round(i / 20, 2) for i in range(21))  # threshold candidates: 0, 0.05, ..., 1
NEVER = 1.01  # the threshold that never accepts (no probability reaches it): the search's extra candidate
# An unfitted cascade's score: the label's prior blended with the support score, accepted from 0.5.
LABEL_PRIOR = {"grounded": 0.8, "weak": 0.5, "unsupported": 0.2, "degenerate": 0.0, "abstained": 0.0}


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def answer_logprob(result: Mapping[str, Any]) -> float | None:
    """The answer's mean token log-probability, when its quality dict (or the row) has one."""
    quality = result.get("quality") or {}
    for source in (quality, result):
        for key in LOGPROB_KEYS:
            value = _number(source.get(key)) if isinstance(source, Mapping) else None
            if value is not None:
                return value
    return None


def cascade_features(result: Mapping[str, Any]) -> dict[str, float]:
    """The scorer's features of one tier's answer.

    ``result``: ``quality_label``, ``support``, ``support_score``, ``retrieval_confidence``,
    ``citations_removed``, ``finish_reason``, ``answer`` (a QueryRun's fields, or a pipeline
    result's quality dict with ``label`` for ``quality_label``) and optionally ``quality`` (a dict
    that may hold a log-probability, ``LOGPROB_KEYS``). Missing values get a 0 and a missing flag.
    """
    label = str(result.get("quality_label") or result.get("label") or "")
    support = _number(result.get("support"))
    confidence = _number(result.get("retrieval_confidence"))
    logprob = answer_logprob(result)
    words = len(str(result.get("answer") or "").split())
    features = {f"label_{name}": float(label == name) for name in LABELS}
    features.update(
        support=support if support is not None else 0.0,
        support_missing=float(support is None),
        support_score=_number(result.get("support_score")) or 0.0,
        retrieval_confidence=confidence if confidence is not None else 0.5,
        retrieval_confidence_missing=float(confidence is None),
        citations_removed=float(min(int(_number(result.get("citations_removed")) or 0), 5)),
        repetition=float(result.get("finish_reason") == "repetition"),
        answer_words_log=math.log1p(words),
        logprob=logprob if logprob is not None else 0.0,
        logprob_missing=float(logprob is None),
    )
    return features


@dataclass
class TierModel:
    """One tier's logistic regression over standardised features, and its acceptance threshold."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float = 0.5
    n: int = 0  # labelled rows it was fit on
    positive_rate: float | None = None

    def score(self, values: Mapping[str, float]) -> float:
        z = self.intercept + sum(
            c * ((values.get(name, 0.0) - m) / s) for name, m, s, c in zip(
                self.features, self.mean, self.scale, self.coef, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@dataclass
class ScorerParams:
    """A cascade's scorer: one ``TierModel`` per tier but the last (which always answers)."""

    tiers: list[TierModel] = field(default_factory=list)
    objective: dict[str, Any] = field(default_factory=dict)  # how the thresholds were chosen, and their fit
    version: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "objective": self.objective,
            "tiers": [vars(tier).copy() for tier in self.tiers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScorerParams:
        """Parse stored JSON; ValueError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("the scorer must be an object")
        tiers = []
        for i, raw in enumerate(data.get("tiers") or []):
            if not isinstance(raw, Mapping):
                raise ValueError(f"scorer tier {i + 1} must be an object")
            try:
                tier = TierModel(
                    features=[str(f) for f in raw["features"]], mean=[float(v) for v in raw["mean"]],
                    scale=[float(v) for v in raw["scale"]], coef=[float(v) for v in raw["coef"]],
                    intercept=float(raw["intercept"]), threshold=float(raw.get("threshold", 0.5)),
                    n=int(raw.get("n", 0)), positive_rate=_number(raw.get("positive_rate")),
                )
            except (KeyError, TypeError, ValueError) as exc:
                needs = "features, mean, scale, coef, intercept"
                raise ValueError(f"scorer tier {i + 1}: {exc!r} (needs {needs})") from exc
            if not len(tier.features) == len(tier.mean) == len(tier.scale) == len(tier.coef):
                raise ValueError(f"scorer tier {i + 1}: features, mean, scale and coef differ in length")
            if any(s <= 0 for s in tier.scale) or not 0 <= tier.threshold <= NEVER + 1e-9:
                raise ValueError(f"scorer tier {i + 1}: scales must be > 0 and the threshold in [0, 1] "
                                 f"(or {NEVER}: never accept)")
            unknown = set(tier.features) - set(BASE_FEATURES) - set(LOGPROB_FEATURES)
            if unknown:
                raise ValueError(f"scorer tier {i + 1}: unknown features {sorted(unknown)}")
            tiers.append(tier)
        return cls(tiers=tiers, objective=dict(data.get("objective") or {}), version=int(data.get("version", 1)))


@dataclass(frozen=True)
class Decision:
    """What the scorer said about one tier's answer."""

    score: float
    threshold: float
    accept: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "threshold": self.threshold, "accept": self.accept,
                "decision": "accept" if self.accept else "escalate", "reason": self.reason}


def prior_score(result: Mapping[str, Any]) -> float:
    """An unfitted scorer's probability: the label's prior, averaged with the support score when known."""
    label = str(result.get("quality_label") or result.get("label") or "")
    prior = LABEL_PRIOR.get(label, 0.5)
    support = _number(result.get("support_score"))
    return prior if support is None else (prior + support) / 2


def cascade_decide(
    *, params: ScorerParams | None, tier: int, tiers: int, result: Mapping[str, Any]
) -> Decision:
    """Accept tier ``tier``'s answer (0-based, of ``tiers``) or escalate. The last tier always answers;
    an answer the pipeline abstained on or the guard stopped as a loop escalates whatever the score."""
    fitted = params is not None and tier < len(params.tiers)
    score = params.tiers[tier].score(cascade_features(result)) if fitted and params else prior_score(result)
    threshold = params.tiers[tier].threshold if fitted and params else 0.5
    label = str(result.get("quality_label") or result.get("label") or "")
    if tier >= tiers - 1:
        return Decision(score, threshold, True, "last tier: its answer stands")
    if label in ("degenerate", "abstained"):
        return Decision(score, threshold, False, f"answer {label}: escalate")
    if score >= threshold:
        return Decision(score, threshold, True, f"score {score:.2f} ≥ threshold {threshold:.2f}")
    return Decision(score, threshold, False, f"score {score:.2f} < threshold {threshold:.2f}: escalate")


# --------------------------------------------------------------------------- fitting


def _tier_fit(rows: Sequence[Mapping[str, Any]], features: list[str], c: float) -> TierModel:
    import numpy as np

    x = np.array([[cascade_features(r)[name] for name in features] for r in rows], dtype=float)
    y = np.array([bool(r["correct"]) for r in rows], dtype=int)
    mean = x.mean(axis=0) if len(x) else np.zeros(len(features))
    scale = x.std(axis=0) if len(x) else np.ones(len(features))
    scale[scale < 1e-9] = 1.0
    rate = float(y.mean()) if len(y) else None
    if len(set(y.tolist())) < 2:  # one class only: a constant probability, the base rate
        p = min(max(rate if rate is not None else 0.5, 1e-4), 1 - 1e-4)
        return TierModel(features=features, mean=mean.tolist(), scale=scale.tolist(),
                         coef=[0.0] * len(features), intercept=math.log(p / (1 - p)), n=len(rows), positive_rate=rate)
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=1000)
    model.fit((x - mean) / scale, y)
    return TierModel(features=features, mean=mean.tolist(), scale=scale.tolist(), coef=model.coef_[0].tolist(),
                     intercept=float(model.intercept_[0]), n=len(rows), positive_rate=rate)


def _tier_key(row: Mapping[str, Any], tier_names: Sequence[str] | None) -> int:
    tier = row["tier"]
    if isinstance(tier, int):
        return tier
    if tier_names is None or tier not in tier_names:
        raise ValueError(f"unknown tier {tier!r} (tiers: {list(tier_names or [])})")
    return list(tier_names).index(tier)


def cascade_scorer_fit(
    rows: Sequence[Mapping[str, Any]],
    *,
    tier_names: Sequence[str] | None = None,
    tiers: int | None = None,
    accuracy_floor: float | None = None,
    cost_target: float | None = None,
    c: float = 1.0,
) -> ScorerParams:
    """Fit a cascade's scorer from labelled rows.

    A row is one tier's answer to one question: ``tier`` (0-based index, or a name in
    ``tier_names``), ``correct`` (bool), the quality fields ``cascade_features`` reads
    (``quality_label``, ``support``, ``support_score``, ``retrieval_confidence``,
    ``citations_removed``, ``finish_reason``, ``answer``, optional ``quality`` with a
    log-probability) and, for choosing thresholds, ``question`` (any hashable id) and ``cost``
    (number or decimal string: what that tier's answer cost). One logistic regression per tier but
    the last (L2, ``c``: inverse strength, features standardised). Thresholds: when every question
    has every tier's row with a cost, ``thresholds_select`` under ``accuracy_floor`` (minimise cost)
    or ``cost_target`` (maximise accuracy); neither: the floor is the last tier's accuracy. Else 0.5.
    The log-probability features are used only when some row has a log-probability.
    """
    if not rows:
        raise ValueError("no labelled rows to fit a scorer on")
    count = tiers or (len(tier_names) if tier_names else max(_tier_key(r, tier_names) for r in rows) + 1)
    features = list(BASE_FEATURES) + (list(LOGPROB_FEATURES) if any(answer_logprob(r) is not None for r in rows)
                                       else [])
    by_tier: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_tier.setdefault(_tier_key(row, tier_names), []).append(row)
    models = [_tier_fit(by_tier.get(t, []), features, c) for t in range(count - 1)]
    params = ScorerParams(tiers=models)
    table = _question_table(rows, tier_names, count)
    if table is None:
        params.objective = {"thresholds": "default 0.5 (rows lack question ids or costs for every tier)"}
        return params
    questions = sorted(table, key=str)
    scores = [[params.tiers[t].score(cascade_features(table[q][t])) if t < count - 1 else 1.0
               for t in range(count)] for q in questions]
    correct = [[bool(table[q][t]["correct"]) for t in range(count)] for q in questions]
    costs = [[float(table[q][t]["cost"]) for t in range(count)] for q in questions]
    forced = [[str(table[q][t].get("quality_label") or "") in ("degenerate", "abstained") for t in range(count)]
              for q in questions]
    if accuracy_floor is None and cost_target is None:
        accuracy_floor = sum(row[-1] for row in correct) / len(correct)
    choice = thresholds_select(scores=scores, correct=correct, costs=costs, forced=forced,
                               accuracy_floor=accuracy_floor, cost_target=cost_target)
    for model, threshold in zip(params.tiers, choice["thresholds"], strict=True):
        model.threshold = threshold
    params.objective = {"accuracy_floor": accuracy_floor, "cost_target": cost_target, "questions": len(questions),
                        "fit_accuracy": choice["accuracy"], "fit_cost_per_question": choice["cost"],
                        "met": choice["met"], "search": choice["search"]}
    return params


def _question_table(
    rows: Sequence[Mapping[str, Any]], tier_names: Sequence[str] | None, count: int
) -> dict[Any, dict[int, Mapping[str, Any]]] | None:
    table: dict[Any, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("question") is None or _number(row.get("cost")) is None:
            return None
        table.setdefault(row["question"], {})[_tier_key(row, tier_names)] = row
    if not table or any(len(v) != count for v in table.values()):
        return None
    return table


def cascade_simulate(
    *, scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]], costs: Sequence[Sequence[float]],
    thresholds: Sequence[float], forced: Sequence[Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """The plain cascade, question by question: tiers in order until one is accepted (score ≥ its
    threshold and not forced to escalate, or the last); cost is the sum of the tiers tried.
    Returns accuracy, mean cost and the answering tier of each question."""
    answered, right, total = [], 0, 0.0
    for q in range(len(scores)):
        for t in range(len(scores[q])):
            total += costs[q][t]
            last = t == len(scores[q]) - 1
            if last or (scores[q][t] >= thresholds[t] and not (forced and forced[q][t])):
                answered.append(t)
                right += bool(correct[q][t])
                break
    n = len(scores) or 1
    return {"accuracy": right / n, "cost": total / n, "answered_by": answered}


# Thresholds searched exhaustively up to this many (22^3 = 10,648 combinations: about a second); a cascade of
# more tiers (22^4: 23-46 s for 200 questions on a shared 2-core machine; 22^7: days) is searched by coordinate
# descent (under a second for 8 tiers).
EXHAUSTIVE_UP_TO = 3
DESCENT_STARTS = (NEVER, 0.5, 0.0)  # always escalate, the unfitted default, always accept
DESCENT_PASSES = 20


def thresholds_select(
    *, scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]], costs: Sequence[Sequence[float]],
    forced: Sequence[Sequence[bool]] | None = None, accuracy_floor: float | None = None,
    cost_target: float | None = None, grid: Sequence[float] = GRID, exhaustive_up_to: int = EXHAUSTIVE_UP_TO,
) -> dict[str, Any]:
    """Per-tier thresholds (every tier but the last) over ``grid`` (plus 1.01: never accept), each
    candidate evaluated vectorised over questions with numpy.

    ``accuracy_floor``: the cheapest thresholds whose accuracy reaches the floor (none does: the most
    accurate, cheapest among equals). ``cost_target``: the most accurate whose mean cost is within
    the target (none is: the cheapest). Ties go to the cheaper, then to the higher thresholds.
    Up to ``exhaustive_up_to`` thresholds (4 tiers) the search is exhaustive; beyond, coordinate
    descent (one threshold at a time over the grid, the others fixed, until no change) from each of
    ``DESCENT_STARTS``, the best result kept: a local optimum, no longer guaranteed the grid's best.
    Returns ``{"thresholds", "accuracy", "cost", "met", "search"}``.
    """
    import numpy as np

    if (accuracy_floor is None) == (cost_target is None):
        raise ValueError("give exactly one of accuracy_floor and cost_target")
    s, ok, cost = np.asarray(scores, float), np.asarray(correct, bool), np.asarray(costs, float)
    stop = np.asarray(forced, bool) if forced is not None else np.zeros_like(ok)
    n, k = s.shape
    cumulative = np.cumsum(cost, axis=1)
    candidates = sorted(set(grid) | {NEVER}, reverse=True)
    rows = np.arange(n)

    def evaluate(combo: Sequence[float]) -> tuple:
        accept = np.concatenate([(s[:, :-1] >= np.asarray(combo)) & ~stop[:, :-1], np.ones((n, 1), bool)], axis=1)
        first = accept.argmax(axis=1)
        accuracy = float(ok[rows, first].mean())
        mean_cost = float(cumulative[rows, first].mean())
        if accuracy_floor is not None:
            met = accuracy >= accuracy_floor - 1e-12
            key = (met, -mean_cost if met else accuracy, -mean_cost if not met else 0.0)
        else:
            assert cost_target is not None
            met = mean_cost <= cost_target + 1e-15
            key = (met, accuracy if met else -mean_cost, -mean_cost)
        return key, list(combo), accuracy, mean_cost, met

    best: tuple | None = None
    if k - 1 <= exhaustive_up_to:
        search = "exhaustive"
        for combo in itertools.product(candidates, repeat=k - 1):
            result = evaluate(combo)
            if best is None or result[0] > best[0]:
                best = result
    else:
        search = "coordinate descent"
        for start in DESCENT_STARTS:
            current = evaluate([start] * (k - 1))
            for _ in range(DESCENT_PASSES):
                improved = False
                for i in range(k - 1):
                    for value in candidates:
                        result = evaluate([*current[1][:i], value, *current[1][i + 1:]])
                        if result[0] > current[0]:
                            current, improved = result, True
                if not improved:
                    break
            if best is None or current[0] > best[0]:
                best = current
    assert best is not None
    return {"thresholds": best[1], "accuracy": best[2], "cost": best[3], "met": bool(best[4]), "search": search}


__all__ = [
    "BASE_FEATURES", "LOGPROB_FEATURES", "Decision", "ScorerParams", "TierModel", "cascade_decide",
    "cascade_features", "cascade_scorer_fit", "cascade_simulate", "thresholds_select",
]
