from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from indexes.vector_index import (
    SIDECAR_FILENAME,
    IndexCorruptError,
    IndexSettings,
    VectorIndex,
    index_file_lock,
    resolve_index_type,
)

IDS = np.arange(1000, 1200, dtype=np.int64)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_it_finds_each_vector_by_its_id(index_type, vectors):
    index = VectorIndex(
        dimension=16, index_type=index_type, settings=IndexSettings(ivf_nlist=4, ivf_nprobe=4)
    )
    index.add(IDS, vectors)
    assert index.count == 200
    scores, ids = index.search(vectors[:5], 3)
    assert ids[:, 0].tolist() == IDS[:5].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_it_removes_and_replaces_ids(index_type, vectors):
    index = VectorIndex(
        dimension=16, index_type=index_type, settings=IndexSettings(ivf_nlist=4, ivf_nprobe=4)
    )
    index.add(IDS, vectors)
    assert index.remove([1000, 1001, 99]) == 2
    assert index.count == 198
    assert 1000 not in index.search(vectors[:1], 5)[1]
    index.add([1002], vectors[10:11])  # re-adding an id replaces its vector
    assert index.count == 198
    assert set(index.search(vectors[10:11], 2)[1][0]) == {1002, 1010}


def test_it_trains_ivf_only_once_there_is_enough_data(vectors):
    index = VectorIndex(dimension=16, index_type="ivf", settings=IndexSettings(ivf_nlist=4))
    index.add(IDS[:50], vectors[:50])
    assert index.effective_type == "flat"  # 50 < 4 lists * 39 points
    index.add(IDS[50:], vectors[50:])
    assert index.effective_type == "ivf" and index.count == 200


def test_it_saves_and_loads_atomically(tmp_path, vectors):
    index = VectorIndex(dimension=16, index_type="hnsw", model="all-MiniLM-L6-v2")
    index.add(IDS, vectors)
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vectors.faiss",
        "vectors.json",
    ]  # no temp files left
    sidecar = json.loads((tmp_path / SIDECAR_FILENAME).read_text())
    assert sidecar["model"] == "all-MiniLM-L6-v2" and sidecar["count"] == 200 and sidecar["dimension"] == 16
    assert sidecar["index_type"] == "hnsw" and sidecar["version"] == 1
    loaded = VectorIndex.load(tmp_path)
    assert loaded.count == 200 and loaded.index_type == "hnsw" and loaded.model == "all-MiniLM-L6-v2"
    np.testing.assert_array_equal(loaded.search(vectors[:3], 4)[1], index.search(vectors[:3], 4)[1])
    assert sorted(loaded.ids().tolist()) == IDS.tolist()


def test_it_detects_a_count_mismatch(tmp_path, vectors):
    index = VectorIndex(dimension=16)
    index.add(IDS, vectors)
    index.save(tmp_path)
    sidecar = json.loads((tmp_path / SIDECAR_FILENAME).read_text())
    sidecar["count"] = 199
    (tmp_path / SIDECAR_FILENAME).write_text(json.dumps(sidecar))
    with pytest.raises(IndexCorruptError, match="holds 200 vectors but its sidecar says 199"):
        VectorIndex.load(tmp_path)


def test_it_detects_an_unreadable_index_file(tmp_path, vectors):
    index = VectorIndex(dimension=16)
    index.add(IDS, vectors)
    index.save(tmp_path)
    (tmp_path / "vectors.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


def test_it_searches_an_empty_index(vectors):
    scores, ids = VectorIndex(dimension=16).search(vectors[:2], 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_it_pads_missing_results_with_minus_one(vectors):
    index = VectorIndex(dimension=16)
    index.add(IDS[:2], vectors[:2])
    scores, ids = index.search(vectors[:1], 5)
    assert ids[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


def test_it_rejects_wrong_shapes_and_unknown_types(vectors):
    index = VectorIndex(dimension=16)
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        index.add([1], np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add([1, 2], vectors[:1])
    with pytest.raises(ValueError, match="valid: flat, hnsw, ivf, auto"):
        VectorIndex(dimension=16, index_type="annoy")


def test_it_chooses_a_type_by_count_in_auto_mode():
    settings = IndexSettings(auto_flat_max=100, auto_hnsw_max=1000)
    assert resolve_index_type("auto", count=50, settings=settings) == "flat"
    assert resolve_index_type("auto", count=500, settings=settings) == "hnsw"
    assert resolve_index_type("auto", count=5000, settings=settings) == "ivf"


def test_it_allows_searches_during_writes(vectors):
    index = VectorIndex(dimension=16)
    index.add(IDS[:100], vectors[:100])
    errors: list[Exception] = []

    def search() -> None:
        try:
            for _ in range(200):
                index.search(vectors[:4], 5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    reader = threading.Thread(target=search)
    reader.start()
    for i in range(100, 200):
        index.add(IDS[i : i + 1], vectors[i : i + 1])
    reader.join()
    assert errors == [] and index.count == 200


def test_it_locks_the_folder_across_writers(tmp_path):
    with index_file_lock(tmp_path):
        assert (tmp_path / ".lock").exists()
    with index_file_lock(tmp_path, shared=True), index_file_lock(tmp_path, shared=True):
        pass
