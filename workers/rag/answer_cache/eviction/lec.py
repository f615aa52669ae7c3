"""Least Expected Cost (Zhu et al., "On Optimal Caching and Model Multiplexing for LLM inference", 2023).

The entry to evict is the one whose absence is expected to cost least: its estimated request rate
times the cost of answering it again. The rate is the entry's requests over the time it has been
cached, (hits + 1) / (now − inserted + 1): the paper's frequency estimate, with one request (the
insertion) counted so a new entry is not evicted before it could be asked again.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.rag.answer_cache.eviction import CacheItem


def expected_cost(item: CacheItem, now: float) -> float:
    return (item.hits + 1) / (now - item.inserted + 1) * item.cost


class LeastExpectedCost:
    name = "lec"

    def priority(self, item: CacheItem, *, now: float, clock: float) -> float:
        return expected_cost(item, now)

    def victim(self, items: Sequence[CacheItem], *, now: float) -> CacheItem:
        return min(items, key=lambda i: (expected_cost(i, now), i.last_used, str(i.key)))

    def clock_after(self, victim: CacheItem, clock: float) -> float:
        return clock
