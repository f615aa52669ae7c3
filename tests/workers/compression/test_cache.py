"""The on-disk LRU cache: hits, misses, keys, eviction, persistence."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from workers.compression.cache import CompressionCache, cache_key


def test_it_misses_then_hits_and_counts_both(tmp_path):
    cache = CompressionCache(tmp_path)
    key = cache_key("m", {"a": 1}, "some chunk", 0.5)
    assert cache.get(key) is None
    cache.put(key, b"value")
    assert cache.get(key) == b"value"
    assert (cache.hits, cache.misses) == (1, 1)


def test_it_round_trips_json_and_arrays_and_persists_across_instances(tmp_path):
    cache = CompressionCache(tmp_path)
    cache.put_json("j" * 64, {"spans": [[0, 3]]})
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put_array("a" * 64, array)
    again = CompressionCache(tmp_path)
    assert again.get_json("j" * 64) == {"spans": [[0, 3]]}
    np.testing.assert_array_equal(again.get_array("a" * 64), array)


def test_it_keys_on_method_params_text_and_target():
    base = cache_key("surprisal_prune", {"p": 1}, "text", 0.33)
    assert base == cache_key("surprisal_prune", {"p": 1}, "text", 0.33)
    assert len({
        base,
        cache_key("semantic_prune", {"p": 1}, "text", 0.33),
        cache_key("surprisal_prune", {"p": 2}, "text", 0.33),
        cache_key("surprisal_prune", {"p": 1}, "text!", 0.33),
        cache_key("surprisal_prune", {"p": 1}, "text", 0.5),
    }) == 5


def test_it_evicts_the_least_recently_used_entries_past_its_size_bound(tmp_path):
    cache = CompressionCache(tmp_path, max_bytes=1000)
    keys = [f"{i:02d}" + "0" * 62 for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, bytes(300))
        # mtime resolution: make the order of use unambiguous
        os.utime(cache._path(key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], bytes(300))  # 1,200 bytes > 1,000: evict down to 900
    assert keys[1] not in cache  # the least recently used went first
    assert keys[0] in cache and keys[3] in cache
    assert cache.size_bytes() <= 1000


def test_it_refuses_a_bound_below_one_byte_and_skips_values_larger_than_the_bound(tmp_path):
    with pytest.raises(ValueError):
        CompressionCache(tmp_path, max_bytes=0)
    cache = CompressionCache(tmp_path, max_bytes=10)
    cache.put("k" * 64, bytes(11))
    assert cache.get("k" * 64) is None
