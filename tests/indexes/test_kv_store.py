"""The KV store: round trips, LRU eviction within the size budget, corrupt files become misses."""

from __future__ import annotations

import os
import time

import pytest
import torch

from indexes.kv_store import KVEntry, KVKey, KVStore, text_hash

LAYERS, HEADS, DIM = 2, 3, 4


def entry(n_tokens: int, seed: int = 0) -> KVEntry:
    g = torch.Generator().manual_seed(seed)
    return KVEntry(
        keys=[torch.randn(HEADS, n_tokens, DIM, generator=g) for _ in range(LAYERS)],
        values=[torch.randn(HEADS, n_tokens, DIM, generator=g) for _ in range(LAYERS)],
        token_ids=list(range(100, 100 + n_tokens)),
        meta={"logprob": "-1.25"},
    )


def key(chunk_id: int | None, text: str = "text") -> KVKey:
    return KVKey(model="tiny-model", preamble_hash=text_hash("preamble"), chunk_id=chunk_id, text_hash=text_hash(text))


def file_size(store: KVStore, n_tokens: int) -> int:
    probe = KVStore(store.root.parent / "probe")
    probe.put(key(0), entry(n_tokens))
    return probe.path_for(key(0)).stat().st_size


def test_it_round_trips_an_entry_with_its_metadata(tmp_path):
    store = KVStore(tmp_path)
    original = entry(5, seed=1)
    assert store.get(key(7)) is None
    assert store.put(key(7), original)
    loaded = store.get(key(7))
    assert loaded is not None
    assert loaded.token_ids == original.token_ids
    assert loaded.meta["logprob"] == "-1.25"
    for a, b in zip(loaded.keys + loaded.values, original.keys + original.values, strict=True):
        assert torch.equal(a, b)
    assert key(7) in store and key(8) not in store


def test_it_keys_entries_by_model_preamble_chunk_and_text(tmp_path):
    store = KVStore(tmp_path)
    store.put(key(7, "old text"), entry(3))
    assert store.get(key(7, "new text")) is None  # an edited chunk never reuses a stale cache
    assert store.get(KVKey(model="other", preamble_hash=text_hash("preamble"), chunk_id=7,
                           text_hash=text_hash("old text"))) is None
    assert store.get(key(None)) is None  # the preamble's own entry is separate
    assert store.get(key(7, "old text")) is not None


def test_it_evicts_least_recently_used_entries_to_stay_within_the_budget(tmp_path):
    size = file_size(KVStore(tmp_path / "sizes"), 8)
    store = KVStore(tmp_path / "store", max_bytes=3 * size + size // 2)  # room for three entries
    for chunk_id in (1, 2, 3):
        store.put(key(chunk_id), entry(8, seed=chunk_id))
        time.sleep(0.01)
    store.get(key(1))  # 1 is now the most recently used; 2 is the oldest
    time.sleep(0.01)
    store.put(key(4), entry(8, seed=4))
    assert key(2) not in store
    assert all(key(c) in store for c in (1, 3, 4))
    assert store.total_bytes() <= store.max_bytes
    assert sum(p.stat().st_size for p in store.root.rglob("*.safetensors")) <= store.max_bytes
    assert [path.rsplit("/", 1)[-1].split("-")[1] for path, _, _ in store.entries()] == ["3", "1", "4"]


def test_it_does_not_keep_an_entry_larger_than_the_whole_budget(tmp_path):
    store = KVStore(tmp_path, max_bytes=100)
    assert store.put(key(1), entry(8)) is False
    assert key(1) not in store and store.total_bytes() == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_it_treats_a_corrupt_or_partial_file_as_a_miss_and_deletes_it(tmp_path, damage):
    store = KVStore(tmp_path)
    store.put(key(1), entry(6))
    path = store.path_for(key(1))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(b"")
    assert store.get(key(1)) is None
    assert not path.exists()
    assert store.total_bytes() == 0
    store.put(key(1), entry(6))  # rebuilt on the next use
    assert store.get(key(1)) is not None


def test_it_leaves_no_temp_files_and_adopts_files_missing_from_the_index(tmp_path):
    store = KVStore(tmp_path)
    store.put(key(1), entry(4))
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "index.sqlite3").unlink()  # a lost sidecar: the files are still good
    fresh = KVStore(tmp_path)
    assert fresh.total_bytes() == 0
    assert fresh.get(key(1)) is not None
    assert fresh.total_bytes() == store.path_for(key(1)).stat().st_size


def test_it_clears_everything_and_stays_usable(tmp_path):
    store = KVStore(tmp_path)
    for chunk_id in (1, 2):
        store.put(key(chunk_id), entry(4))
    store.clear()
    assert store.total_bytes() == 0 and not list(tmp_path.rglob("*.safetensors"))
    store.put(key(3), entry(4))
    assert store.get(key(3)) is not None


def test_it_rejects_entries_whose_shapes_disagree(tmp_path):
    bad = entry(4)
    bad.keys[0] = torch.zeros(HEADS, 5, DIM)
    with pytest.raises(ValueError, match="layer 0"):
        KVStore(tmp_path).put(key(1), bad)
