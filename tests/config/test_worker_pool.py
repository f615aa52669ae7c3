"""Every documented gpu worker command runs a pool that enforces Celery's task time limits (prefork, one
process): the solo pool enforces none, so one oversized task could hold the gpu queue for good."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name", ["Makefile", "docker/gpu-worker.Dockerfile", "docker/compose.yaml", "docs/operations.md", "README.md"]
)
def test_it_starts_the_gpu_worker_with_the_prefork_pool(name):
    lines = [
        line.replace('"', "").replace(",", " ")
        for line in (ROOT / name).read_text().splitlines()
        if "-Q gpu" in line or '"-Q", "gpu"' in line
    ]
    assert lines, f"{name} starts no gpu worker"
    for line in lines:
        flat = " ".join(line.split())
        if "PARSIMONY_BATCH_MAX_ROWS" in flat:
            # The batched gpu worker (docs/operations.md): a threads pool shares one batching engine; it
            # enforces no hard time limit, the model's wall-time limit stops a generation instead.
            assert "--pool threads" in flat and "solo" not in flat, (name, line)
            continue
        assert "--pool prefork" in flat and "--concurrency 1" in flat and "solo" not in flat, (name, line)
