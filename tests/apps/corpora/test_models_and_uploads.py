"""Fast tests: no model is loaded (uploads that fail at once, validation, scoping)."""

from __future__ import annotations

import pytest
from django.http import Http404

from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.corpora.models import Chunk, Document, DocumentStatus
from apps.corpora.selectors import chunk_search, corpus_get, corpus_list, document_list
from apps.corpora.services import corpus_create, corpus_delete, corpus_update, document_upload

pytestmark = pytest.mark.django_db


def test_it_rejects_an_unknown_index_type_listing_the_valid_ones(team_a):
    with pytest.raises(ValidationFailed) as error:
        corpus_create(team=team_a, name="x", index_type="annoy")
    assert "flat" in error.value.message and "hnsw" in error.value.message and "auto" in error.value.message


def test_it_keeps_corpus_names_unique_per_team(team_a, team_b):
    corpus_create(team=team_a, name="Docs")
    corpus_create(team=team_b, name="Docs")
    with pytest.raises(ValidationFailed):
        corpus_create(team=team_a, name="Docs")


def test_it_refuses_to_change_the_embedding_model_to_an_unknown_one(corpus):
    with pytest.raises(ValidationFailed):
        corpus_update(corpus=corpus, embedding_model="no-such-model")
    assert corpus_update(corpus=corpus, description="hello").description == "hello"


def test_it_marks_an_oversize_upload_failed_with_a_clear_message_and_starts_no_job(settings, corpus, alice):
    settings.PARSIMONY_MAX_UPLOAD_BYTES = 1_000_000
    document = document_upload(corpus=corpus, filename="big.txt", data=b"a" * 2_500_000, user=alice)
    assert document.status == DocumentStatus.FAILED
    assert document.error == "file is 2.5 MB, over the 1 MB limit"
    assert not Job.objects.exists()
    assert not (settings.DATA_ROOT / "uploads").exists()


def test_it_marks_an_unsupported_type_failed_at_once(corpus):
    document = document_upload(corpus=corpus, filename="slides.pptx", data=b"PK\x03\x04...")
    assert document.status == DocumentStatus.FAILED
    assert "unsupported file type '.pptx'" in document.error
    assert Chunk.objects.count() == 0


def test_it_scopes_corpora_to_their_team(team_a, team_b):
    theirs = corpus_create(team=team_b, name="Secret")
    mine = corpus_create(team=team_a, name="Mine")
    assert list(corpus_list(team=team_a)) == [mine]
    with pytest.raises(Http404):
        corpus_get(team=team_a, corpus_id=theirs.pk)
    assert corpus_get(team=team_b, corpus_id=theirs.pk) == theirs


def test_it_lists_documents_by_status(corpus):
    document_upload(corpus=corpus, filename="a.exe", data=b"MZ")
    assert document_list(corpus=corpus, status="failed").count() == 1
    assert document_list(corpus=corpus, status="ready").count() == 0
    with pytest.raises(ValidationFailed):
        document_list(corpus=corpus, status="weird")


def test_it_rejects_an_unknown_retriever_listing_the_valid_names(corpus):
    with pytest.raises(ValidationFailed) as error:
        chunk_search(corpus=corpus, query="anything", retriever="splade")
    assert "dense" in error.value.message and "bm25" in error.value.message and "hybrid" in error.value.message


def test_it_returns_nothing_for_a_corpus_without_an_index(corpus):
    assert chunk_search(corpus=corpus, query="anything", retriever="bm25") == []


def test_it_deletes_a_corpus_with_its_files(settings, corpus):
    document_upload(corpus=corpus, filename="bad.bin", data=b"x")
    corpus_delete(corpus=corpus)
    assert not Document.objects.exists()
