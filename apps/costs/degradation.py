"""Budget-aware degradation: which cheaper way to answer a request gets, from how full its budgets are.

``degradation_for`` (a read, called before a query's hold) returns the rule of the request's policy
(its key's, else its team's) with the highest ``above_percent`` reached by the most-used budget the
request counts against, or None. What a rule does to a pipeline is ``apps.rag.degradation``'s.
"""

from __future__ import annotations

from typing import Any

from apps.core.errors import ValidationFailed
from apps.costs.degradation_rules import degradation_rules_problem
from apps.costs.models import DegradationPolicy


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
