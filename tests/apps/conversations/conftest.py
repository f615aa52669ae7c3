"""Conversation fixtures: a pipeline over an empty corpus (retrieval runs and is billed, finds nothing) and an
echo model whose prompts are recorded, so a test reads exactly what the model was sent."""

from __future__ import annotations

import pytest

from tests.support.prompts import prompts_record

ANSWER = "Zebras have stripes"


@pytest.fixture
def sent(monkeypatch):
    """The messages of every generation, in order (the echo model answers ANSWER)."""
    return prompts_record(monkeypatch, reply=ANSWER)


@pytest.fixture
def zoo_pipeline(team_a, db, settings, tmp_path):
    from apps.corpora.services import corpus_create
    from apps.rag.services import pipeline_save

    settings.DATA_ROOT = tmp_path
    corpus = corpus_create(team=team_a, name="zoo")
    return pipeline_save(
        team=team_a, name="zoo-qa", model_endpoint="smollm2-135m-instruct", corpora=[corpus], max_output_tokens=32
    )
