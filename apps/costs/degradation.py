"""Budget-aware degradation: which cheaper way to answer a request gets, from how full its budgets are.

``degradation_for`` (a read, called before a query's hold) returns the rule of the request's policy
(its key's, else its team's) with the highest ``above_percent`` reached by the most-used budget the
request counts against, or None. What a rule does to a pipeline is ``apps.rag.degradation``'s.
"""

from __future__ import annotations

from typing import Any

from apps.core.errors import ValidationFailed
from apps.costs.models import DegradationPolicy

RULE_KEYS = ("above_percent", "top_k_cap", "max_tiers", "extractive_only")


def degradation_rules_problem(rules: Any) -> str | None:
    """Why ``rules`` is not a list of degradation rules (None when it is)."""
    if not isinstance(rules, list) or not rules:
        return "rules must be a non-empty list of objects"
    seen = set()
    for i, rule in enumerate(rules, 1):
        if not isinstance(rule, dict):
            return f"rule {i} must be an object"
        unknown = set(rule) - set(RULE_KEYS)
        if unknown:
            return f"rule {i}: unknown keys {sorted(unknown)} (valid: {', '.join(RULE_KEYS)})"
        above = rule.get("above_percent")
        if isinstance(above, bool) or not isinstance(above, int | float) or not 0 <= above <= 100:
            return f"rule {i}: above_percent must be a number from 0 to 100; got {above!r}"
        if above in seen:
            return f"rule {i}: two rules for above_percent {above}"
        seen.add(above)
        for key in ("top_k_cap", "max_tiers"):
            value = rule.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                return f"rule {i}: {key} must be a whole number ≥ 1; got {value!r}"
        if "extractive_only" in rule and not isinstance(rule["extractive_only"], bool):
            return f"rule {i}: extractive_only must be true or false"
        if not (rule.get("top_k_cap") or rule.get("max_tiers") or rule.get("extractive_only")):
            return f"rule {i}: give at least one of top_k_cap, max_tiers, extractive_only"
    return None


def degradation_policy_save(*, team, rules: list[dict], api_key=None, enabled: bool = True) -> DegradationPolicy:
    """Create or replace the team's (or the key's) policy; ValidationFailed naming the bad rule."""
    problem = degradation_rules_problem(rules)
    if problem:
        raise ValidationFailed(problem, detail={"fields": {"rules": problem}})
    if api_key is not None and api_key.team_id != team.pk:
        raise ValidationFailed("that key belongs to another team")
    policy, _ = DegradationPolicy.objects.update_or_create(
        team=team, api_key=api_key, defaults={"rules": rules, "enabled": enabled}
    )
    return policy


def degradation_for(*, team, user=None, api_key=None) -> dict[str, Any] | None:
    """The degradation a request gets now: ``{"policy", "used_percent", "budget", "above_percent",
    "top_k_cap", "max_tiers", "extractive_only"}``, or None (no policy, or no rule reached)."""
    from apps.costs.selectors import budget_status
    from apps.costs.services.budgets import budgets_applicable

    policies = DegradationPolicy.objects.filter(team=team, enabled=True)
    policy = (policies.filter(api_key=api_key).first() if api_key is not None else None) or policies.filter(
        api_key=None).first()
    if policy is None:
        return None
    statuses = [budget_status(budget=b) for b in budgets_applicable(team=team, user=user, api_key=api_key)]
    if not statuses:
        return None
    fullest = max(statuses, key=lambda s: s.used_percent)
    reached = [r for r in policy.rules if fullest.used_percent >= float(r["above_percent"])]
    if not reached:
        return None
    rule = max(reached, key=lambda r: float(r["above_percent"]))
    return {
        "policy": policy.pk,
        "used_percent": round(fullest.used_percent, 2),
        "budget": str(fullest.budget),
        "above_percent": rule["above_percent"],
        "top_k_cap": rule.get("top_k_cap"),
        "max_tiers": rule.get("max_tiers"),
        "extractive_only": bool(rule.get("extractive_only")),
    }
