"""Eviction policies by name: which entry leaves a full cache. One module each, a plain reference beside.

Every policy sees the same plain items (``CacheItem``: the dollars one hit saves — the entry's original
cost —, its size, hits, insertion and last-use times, and a stored priority) and answers two things:
the priority an item gets when it is inserted or hit (``priority``), and the victim among the items
(``victim``). GDSF also moves a clock (its "inflation" L) to the victim's priority (``clock_after``).
``CacheSim`` runs a policy over a request trace; ``reference.py`` computes the same traces the plain way.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass
class CacheItem:
    key: Hashable
    cost: float  # dollars one hit saves: what answering the question cost the first time
    size: int = 1  # bytes the entry takes
    hits: int = 0
    inserted: float = 0.0
    last_used: float = 0.0
    priority: float = 0.0


class EvictionPolicy(Protocol):
    name: str

    def priority(self, item: CacheItem, *, now: float, clock: float) -> float: ...

    def victim(self, items: Sequence[CacheItem], *, now: float) -> CacheItem: ...

    def clock_after(self, victim: CacheItem, clock: float) -> float: ...


def _registry() -> dict[str, EvictionPolicy]:
    from workers.rag.answer_cache.eviction.gdsf import GreedyDualSizeFrequency
    from workers.rag.answer_cache.eviction.lec import LeastExpectedCost
    from workers.rag.answer_cache.eviction.lru import LeastRecentlyUsed

    return {p.name: p for p in (LeastRecentlyUsed(), GreedyDualSizeFrequency(), LeastExpectedCost())}


POLICY_NAMES = ("lru", "gdsf", "lec")


def eviction_policy(name: str) -> EvictionPolicy:
    """The policy called ``name``; an unknown name raises and lists the valid ones."""
    policies = _registry()
    try:
        return policies[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (valid: {', '.join(sorted(policies))})") from None


class CacheSim:
    """A cache of ``capacity`` items under ``policy``: ``request`` answers hit or miss (inserting on a miss)."""

    def __init__(self, policy: EvictionPolicy, capacity: int) -> None:
        assert capacity >= 1
        self.policy, self.capacity = policy, capacity
        self.items: dict[Hashable, CacheItem] = {}
        self.clock = 0.0

    def request(self, key: Hashable, *, cost: float, size: int = 1, now: float) -> bool:
        item = self.items.get(key)
        if item is not None:
            item.hits += 1
            item.last_used = now
            item.priority = self.policy.priority(item, now=now, clock=self.clock)
            return True
        if len(self.items) >= self.capacity:
            victim = self.policy.victim(list(self.items.values()), now=now)
            self.clock = self.policy.clock_after(victim, self.clock)
            del self.items[victim.key]
        item = CacheItem(key=key, cost=cost, size=size, inserted=now, last_used=now)
        item.priority = self.policy.priority(item, now=now, clock=self.clock)
        self.items[key] = item
        return False


__all__ = ["POLICY_NAMES", "CacheItem", "CacheSim", "EvictionPolicy", "eviction_policy"]
