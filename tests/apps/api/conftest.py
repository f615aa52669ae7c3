"""API fixtures: a fast echo model for the pipeline's generation (the real model runs in tests/e2e)."""

from __future__ import annotations

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget


@pytest.fixture
def echo_model(monkeypatch):
    monkeypatch.setattr(
        metering,
        "_target_override",
        lambda endpoint: EchoTarget(name=endpoint.name, reply="Paris is the capital [1]"),
    )


@pytest.fixture
def empty_pipeline(team_a, db, settings, tmp_path):
    """A pipeline on an empty corpus: retrieval runs (and is billed) but finds nothing."""
    from apps.corpora.services import corpus_create
    from apps.rag.services import pipeline_save

    settings.DATA_ROOT = tmp_path
    corpus = corpus_create(team=team_a, name="empty")
    return pipeline_save(
        team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", corpora=[corpus], max_output_tokens=32
    )
