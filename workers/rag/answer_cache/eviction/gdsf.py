"""Greedy-Dual-Size-Frequency (Cherkasova 1998), weighted by dollars: H = L + frequency × cost / size.

``cost`` is what one hit saves (the entry's original cost), so an expensive answer stays longer than a
cheap one asked as often; L (the clock) rises to each victim's H, so entries not hit for a long time
age out however costly they were.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.rag.answer_cache.eviction import CacheItem


class GreedyDualSizeFrequency:
    name = "gdsf"

    def priority(self, item: CacheItem, *, now: float, clock: float) -> float:
        return clock + (item.hits + 1) * item.cost / max(item.size, 1)

    def victim(self, items: Sequence[CacheItem], *, now: float) -> CacheItem:
        return min(items, key=lambda i: (i.priority, i.last_used, str(i.key)))

    def clock_after(self, victim: CacheItem, clock: float) -> float:
        return max(clock, victim.priority)
