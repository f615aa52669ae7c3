"""The plain computation each policy is tested against: a trace in, the hit/miss sequence out.

Written from the definitions with no shared code: an OrderedDict for LRU; for GDSF and LEC, a dict of
(key → counters) scanned in full at each eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


def lru_reference(trace: Sequence[tuple[Hashable, float]], capacity: int) -> list[bool]:
    cache: OrderedDict[Hashable, None] = OrderedDict()
    out = []
    for key, _cost in trace:
        if key in cache:
            cache.move_to_end(key)
            out.append(True)
            continue
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[key] = None
        out.append(False)
    return out


def gdsf_reference(trace: Sequence[tuple[Hashable, float]], capacity: int, sizes: dict | None = None) -> list[bool]:
    sizes = sizes or {}
    inflation = 0.0
    table: dict[Hashable, list[float]] = {}  # key -> [H, frequency, last time]
    out = []
    for t, (key, cost) in enumerate(trace):
        size = sizes.get(key, 1)
        if key in table:
            table[key][1] += 1
            table[key][0] = inflation + table[key][1] * cost / size
            table[key][2] = t
            out.append(True)
            continue
        if len(table) >= capacity:
            victim = min(table, key=lambda k: (table[k][0], table[k][2], str(k)))
            inflation = max(inflation, table[victim][0])
            del table[victim]
        table[key] = [inflation + cost / size, 1, t]
        out.append(False)
    return out


def lec_reference(trace: Sequence[tuple[Hashable, float]], capacity: int) -> list[bool]:
    table: dict[Hashable, list[float]] = {}  # key -> [requests, inserted at, cost, last time]
    out = []
    for t, (key, cost) in enumerate(trace):
        if key in table:
            table[key][0] += 1
            table[key][3] = t
            out.append(True)
            continue
        if len(table) >= capacity:
            def expected(k: Hashable, now: int = t) -> tuple:
                requests, inserted, c, last = table[k]
                return (requests / (now - inserted + 1) * c, last, str(k))

            del table[min(table, key=expected)]
        table[key] = [1, t, cost, t]
        out.append(False)
    return out


REFERENCES = {"lru": lru_reference, "gdsf": gdsf_reference, "lec": lec_reference}

__all__ = ["REFERENCES", "gdsf_reference", "lec_reference", "lru_reference"]
