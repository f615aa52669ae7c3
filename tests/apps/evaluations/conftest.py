"""Shared pieces of the evaluation tests: passages the pipelines retrieve, a two-question set, pipelines."""

from __future__ import annotations

import pytest

from apps.evaluations.services import eval_set_upload
from tests.apps.rag.conftest import fake_search_hits

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the "
                     "World's Fair. It was designed by the company of Gustave Eiffel."),
    ("Paris", "Paris is the capital and most populous city of France. It hosted the Olympics in 1900 and 1924."),
]
SET_JSONL = (
    b'{"id": "eiffel-year", "question": "When was the Eiffel Tower completed?", "answers": ["1889"]}\n'
    b'{"id": "capital", "question": "What is the capital of France?", "answers": ["Paris"]}\n'
)


@pytest.fixture
def passages(monkeypatch, settings, tmp_path):
    settings.DATA_ROOT = tmp_path
    return fake_search_hits(monkeypatch, PASSAGES)


@pytest.fixture
def eval_set(team_a, alice):
    return eval_set_upload(team=team_a, name="facts", filename="facts.jsonl", data=SET_JSONL, user=alice)


@pytest.fixture
def make_pipeline(team_a):
    from apps.corpora.services import corpus_create
    from apps.rag.services import pipeline_save

    corpus = corpus_create(team=team_a, name="facts")

    def make(name: str, **values):
        return pipeline_save(team=team_a, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             **{"max_output_tokens": 16, **values})

    return make
