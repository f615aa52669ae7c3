"""Least recently used: the entry whose last hit (or insertion) is oldest leaves. Blind to cost."""

from __future__ import annotations

from collections.abc import Sequence

from workers.rag.answer_cache.eviction import CacheItem


class LeastRecentlyUsed:
    name = "lru"

    def priority(self, item: CacheItem, *, now: float, clock: float) -> float:
        return item.last_used

    def victim(self, items: Sequence[CacheItem], *, now: float) -> CacheItem:
        return min(items, key=lambda i: (i.last_used, i.inserted, str(i.key)))

    def clock_after(self, victim: CacheItem, clock: float) -> float:
        return clock
