"""The shape of a degradation policy's rules (``apps.costs.models.DegradationPolicy``): no imports, so the
model's ``clean`` and the services share it."""

from __future__ import annotations

from typing import Any

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
