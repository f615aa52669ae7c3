"""What a budget degradation (``apps.costs.degradation``) does to a pipeline, before the query's hold.

``query_degradation`` reads the request's degradation and returns the pipeline to run — an
unsaved copy with fewer passages (``top_k_cap``), the extractive answer (``extractive_only``),
or a cascade's first tiers (``max_tiers``, applied where the cascade resolves its tiers) — with
the degradation as stored on the run (including a ``note`` said to the user), or the pipeline
unchanged and None.
"""

from __future__ import annotations

import copy
from typing import Any

from apps.core.errors import ValidationFailed
from apps.rag.models import Pipeline, Retriever

EXTRACTIVE = "extractive_answer"


def degradation_note(degradation: dict[str, Any]) -> str:
    """One sentence for the user: why and how this answer was made cheaper."""
    parts = []
    if degradation.get("extractive_only"):
        parts.append("answered by quoting the passages (no generation)")
    if degradation.get("max_tiers"):
        parts.append(f"only the cascade's first {degradation['max_tiers']} tier(s)")
    if degradation.get("top_k_cap"):
        parts.append(f"at most {degradation['top_k_cap']} passage(s)")
    return (f"Budget {degradation['used_percent']:g}% used ({degradation['budget']}): "
            f"{', '.join(parts)} (degradation policy above {degradation['above_percent']:g}%).")


def pipeline_degraded(*, pipeline: Pipeline, degradation: dict[str, Any] | None) -> Pipeline:
    """An unsaved copy of ``pipeline`` with the degradation's caps (``pipeline`` itself when none).
    A cascade's tiers are degraded one by one where they are resolved (``apps.rag.cascade``)."""
    if not degradation or pipeline.is_cascade:
        return pipeline
    degraded = copy.copy(pipeline)
    if degradation.get("top_k_cap"):
        degraded.top_k = min(pipeline.top_k, int(degradation["top_k_cap"]))
    if degradation.get("extractive_only") and degraded.prompting_strategy != EXTRACTIVE:
        if pipeline.retriever == Retriever.NONE or pipeline.has_fixed_context:
            raise ValidationFailed(
                f"{degradation_note(degradation)} Pipeline {pipeline.name!r} cannot quote passages (it retrieves "
                "none): ask an admin to raise the budget or relax the degradation policy",
                code="budget_degraded",
            )
        degraded.prompting_strategy = EXTRACTIVE
        degraded.prompting_options = {}
        degraded.compression_method = "none"
    return degraded


def query_degradation(*, team, pipeline: Pipeline, user=None, api_key=None) -> tuple[Pipeline, dict[str, Any] | None]:
    """(the pipeline to run, the degradation stored on the run) for a request now."""
    from apps.costs.degradation import degradation_for

    degradation = degradation_for(team=team, user=user, api_key=api_key)
    if degradation is None:
        return pipeline, None
    degradation["note"] = degradation_note(degradation)
    return pipeline_degraded(pipeline=pipeline, degradation=degradation), degradation
