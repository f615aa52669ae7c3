"""Answer cache fixtures: the cache on, a small real corpus (real embeddings and indexes), an echo model."""

from __future__ import annotations

import pytest

from apps.costs import metering
from workers.runtime.meter import EchoTarget

DOCUMENTS = {
    "paris.txt": b"Paris is the capital and most populous city of France. In 1999 the city had 2,125,246 inhabitants.",
    "berlin.txt": b"Berlin is the capital and largest city of Germany. It lies on the river Spree.",
    "zebra.txt": b"Zebras are striped African equines living in herds on the savanna.",
}
REPLY = "Paris is the capital of France [1]."


@pytest.fixture
def cache_on(settings, tmp_path):
    from indexes import corpus_store

    settings.PARSIMONY_ANSWER_CACHE = True
    settings.DATA_ROOT = tmp_path
    corpus_store.cache_clear()
    yield settings
    corpus_store.cache_clear()


@pytest.fixture
def echo_model(monkeypatch):
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply=REPLY))


def make_corpus_pipeline(team, name: str = "geo", **values):
    """A corpus of DOCUMENTS, ingested for real, and a pipeline over it (echo answers)."""
    from apps.corpora.services import corpus_create, document_upload, documents_ingest
    from apps.rag.services import pipeline_save

    corpus = corpus_create(team=team, name=f"{name}-docs")
    documents = [document_upload(corpus=corpus, filename=f, data=d, start_job=False) for f, d in DOCUMENTS.items()]
    documents_ingest(documents=documents)
    pipeline = pipeline_save(team=team, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             max_output_tokens=32, top_k=2, **values)
    return corpus, pipeline, {d.filename: d for d in documents}


@pytest.fixture
def geo(team_a, cache_on, echo_model):
    return make_corpus_pipeline(team_a)
