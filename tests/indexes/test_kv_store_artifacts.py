"""Named artifacts beside a KV store entry (key centroids, key ANN indexes): atomic, LRU-counted, checked."""

from __future__ import annotations

import torch

from indexes.kv_store import KVEntry, KVKey, KVStore


def _entry(n: int = 4) -> KVEntry:
    return KVEntry(keys=[torch.randn(3, n, 8)], values=[torch.randn(3, n, 8)], token_ids=list(range(n)))


def test_it_stores_and_reads_back_named_tensors_beside_an_entry(tmp_path):
    store = KVStore(tmp_path)
    key = KVKey(model="m", preamble_hash="abc")
    store.put(key, _entry())
    tensors = {"centroids.0": torch.randn(3, 5, 8), "labels.0": torch.arange(12, dtype=torch.int32).view(3, 4)}
    assert store.put_artifact(key, "squeezed-123", tensors, {"backend": "squeezed"})
    got, meta = store.get_artifact(key, "squeezed-123")
    assert meta["backend"] == "squeezed" and set(got) == set(tensors)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    path = store.artifact_path(key, "squeezed-123")
    assert path.parent == store.path_for(key).parent and not list(path.parent.glob("*.tmp"))
    assert store.get_artifact(key, "retrieval-456") is None


def test_artifacts_count_in_the_lru_budget(tmp_path):
    store = KVStore(tmp_path, max_bytes=30_000)
    key = KVKey(model="m", preamble_hash="abc")
    store.put_artifact(key, "a", {"x": torch.zeros(2000)})  # ~8 kB each
    store.put_artifact(key, "b", {"x": torch.zeros(2000)})
    store.get_artifact(key, "a")  # a is now the most recently used
    store.put_artifact(key, "c", {"x": torch.zeros(4000)})  # over budget: b goes first
    assert store.get_artifact(key, "b") is None
    assert store.get_artifact(key, "a") is not None and store.get_artifact(key, "c") is not None
    assert store.total_bytes() <= 30_000
    assert not store.put_artifact(key, "huge", {"x": torch.zeros(100_000)})  # larger than the whole budget


def test_an_unreadable_or_foreign_artifact_is_a_miss_and_is_deleted(tmp_path):
    store = KVStore(tmp_path)
    key = KVKey(model="m", preamble_hash="abc")
    store.put_artifact(key, "a", {"x": torch.ones(3)})
    path = store.artifact_path(key, "a")
    path.write_bytes(b"not a safetensors file")
    assert store.get_artifact(key, "a") is None and not path.exists()
    store.put_artifact(key, "a", {"x": torch.ones(3)})
    path.rename(store.artifact_path(key, "b"))  # right format, wrong name
    assert store.get_artifact(key, "b") is None
