"""Reads of the answer cache: what it did for a run, and a team's metrics (the usage page, the admin)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum

from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, CacheOutcome
from apps.costs.models import ZERO
from apps.costs.money_format import money_str

HIT_OUTCOMES = (CacheOutcome.HIT_EXACT, CacheOutcome.HIT_SEMANTIC)


def cache_status(*, run: Any) -> str:
    """``hit`` | ``miss`` | ``bypass`` for a query run: what the ``X-Parsimony-Cache`` header says. A run the
    cache was not consulted for (a direct model call, the cache off) is ``bypass``."""
    outcome = AnswerCacheLookup.objects.filter(query_run_id=run.pk).values_list("outcome", flat=True).first()
    if outcome in HIT_OUTCOMES:
        return "hit"
    return "miss" if outcome == CacheOutcome.MISS else "bypass"


def cache_info(*, run: Any) -> dict[str, Any]:
    """The run's cache record for the API and the answer page: {status, kind (exact | semantic | ""),
    similarity, saved (what a hit saved against running the pipeline), source_query_run_id}."""
    try:  # a list selects it with the runs (apps.rag.selectors.query_run_list): no query per row
        lookup = run.cache_lookup
    except AnswerCacheLookup.DoesNotExist:
        lookup = None
    if lookup is None:
        return {"status": "bypass", "kind": "", "similarity": None, "saved": money_str(ZERO),
                "source_query_run_id": None}
    hit = lookup.outcome in HIT_OUTCOMES
    return {
        "status": "hit" if hit else ("miss" if lookup.outcome == CacheOutcome.MISS else "bypass"),
        "kind": {CacheOutcome.HIT_EXACT: "exact", CacheOutcome.HIT_SEMANTIC: "semantic"}.get(lookup.outcome, ""),
        "similarity": round(lookup.similarity, 4) if hit and lookup.similarity is not None else None,
        "saved": money_str(lookup.saved if hit else ZERO),
        "source_query_run_id": lookup.entry.source_run_id if hit and lookup.entry is not None else None,
    }


def cache_metrics(*, team: Any, since: datetime | None = None) -> dict[str, Any]:
    """Hits (exact, semantic), misses, bypasses, false hits caught by verification, dollars saved and the
    hit rate over lookups that consulted the cache; entries held now."""
    lookups = AnswerCacheLookup.objects.filter(team=team)
    if since is not None:
        lookups = lookups.filter(created_at__gte=since)
    agg = lookups.aggregate(
        exact=Count("pk", filter=Q(outcome=CacheOutcome.HIT_EXACT)),
        semantic=Count("pk", filter=Q(outcome=CacheOutcome.HIT_SEMANTIC)),
        misses=Count("pk", filter=Q(outcome=CacheOutcome.MISS)),
        bypass=Count("pk", filter=Q(outcome=CacheOutcome.BYPASS)),
        caught=Count("pk", filter=Q(outcome=CacheOutcome.MISS) & ~Q(rejected="")),
        saved=Sum("saved"),
    )
    hits = agg["exact"] + agg["semantic"]
    consulted = hits + agg["misses"]
    saved: Decimal = agg["saved"] or ZERO
    return {
        "hits": hits,
        "exact_hits": agg["exact"],
        "semantic_hits": agg["semantic"],
        "misses": agg["misses"],
        "bypassed": agg["bypass"],
        "false_hits_caught": agg["caught"],
        "dollars_saved": saved,
        "hit_rate": hits / consulted if consulted else 0.0,
        "entries": AnswerCacheEntry.objects.filter(team=team).count(),
    }


__all__ = ["HIT_OUTCOMES", "cache_info", "cache_metrics", "cache_status"]
