"""Template filters for the agent pages."""

from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def json_compact(value) -> str:
    """Arguments and results as compact JSON (strings stay plain)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return str(value)
