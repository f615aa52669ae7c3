"""Ingestion through the real pipeline (MiniLM, FAISS, BM25): uploads, failures, dedupe, deletes, crashes."""

from __future__ import annotations

import numpy as np
import pytest

from apps.core.models import Job, JobStatus
from apps.corpora.models import Chunk, Document, DocumentStatus
from apps.corpora.selectors import chunk_search, chunk_search_many, corpus_index_store
from apps.corpora.services import (
    corpus_create,
    corpus_index_rebuild,
    document_delete,
    document_ingest,
    document_upload,
    documents_import_records,
    ingestion,
)
from apps.costs.models import UsageRecord
from tests.apps.corpora.conftest import COFFEE, VOLCANO, ZEBRA, make_docx, make_pdf

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _upload(django_capture_on_commit_callbacks, **kwargs) -> Document:
    with django_capture_on_commit_callbacks(execute=True):
        document = document_upload(**kwargs)
    document.refresh_from_db()
    return document


def _vector_ids(corpus) -> set[int]:
    loaded = corpus_index_store().for_search(corpus.pk)
    return set(loaded.vector_index.ids().tolist()) if loaded.vector_index is not None else set()


def test_it_ingests_txt_md_html_pdf_and_docx_into_ready_documents_with_chunks(
    corpus, alice, django_capture_on_commit_callbacks
):
    files = {
        "zebra.txt": ZEBRA.encode(),
        "volcano.md": f"# Volcanoes\n\n{VOLCANO}".encode(),
        "coffee.html": (
            "<html><head><title>Coffee</title><script>var hidden=1</script></head>"
            f"<body><p>{COFFEE}</p></body></html>"
        ).encode(),
        "report.pdf": make_pdf(
            ["Parsimony keeps retrieval costs low.", "Budgets are enforced before work runs."]
        ),
        "memo.docx": make_docx(["The quarterly memo discusses glaciers melting in Greenland."]),
    }
    documents = {
        name: _upload(django_capture_on_commit_callbacks, corpus=corpus, filename=name, data=data, user=alice)
        for name, data in files.items()
    }
    for name, document in documents.items():
        assert document.status == DocumentStatus.READY, (name, document.error)
        assert document.chunks.count() >= 1
        assert document.token_count > 0
        for chunk in document.chunks.all():
            assert chunk.vector_id == chunk.pk
    assert documents["volcano.md"].title == "Volcanoes"
    assert documents["coffee.html"].title == "Coffee"
    assert "hidden" not in documents["coffee.html"].chunks.get().text
    job = Job.objects.filter(kind="corpora.ingest").order_by("pk").last()
    assert job.status == JobStatus.SUCCEEDED and job.queue == "gpu"
    assert job.progress_done == job.progress_total > 0
    ledger = UsageRecord.objects.filter(stage="embed")
    assert ledger.count() == 5
    assert {r.model_name for r in ledger} == {"local/all-minilm-l6-v2"}
    assert all(r.user == alice and r.team == corpus.team and r.prompt_tokens > 0 for r in ledger)
    assert _vector_ids(corpus) == set(Chunk.objects.values_list("vector_id", flat=True))
    hits = chunk_search(corpus=corpus, query="active volcano in Sicily", k=2)
    assert hits[0].chunk.document == documents["volcano.md"]


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", "corrupt PDF"),
        ("empty.txt", b"   \n\n  ", "document contains no text"),
        ("broken.docx", b"not a zip file", "corrupt Word document"),
    ],
)
def test_it_marks_a_bad_document_failed_and_leaves_the_corpus_untouched(
    corpus, django_capture_on_commit_callbacks, filename, data, message
):
    good = _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="zebra.txt", data=ZEBRA.encode())
    chunks_before = list(Chunk.objects.values_list("pk", "text"))
    vectors_before = _vector_ids(corpus)
    bad = _upload(django_capture_on_commit_callbacks, corpus=corpus, filename=filename, data=data)
    assert bad.status == DocumentStatus.FAILED
    assert message in bad.error
    assert list(Chunk.objects.values_list("pk", "text")) == chunks_before
    assert _vector_ids(corpus) == vectors_before
    good.refresh_from_db()
    assert good.status == DocumentStatus.READY


def test_it_creates_no_new_chunks_for_a_duplicate_upload(corpus, django_capture_on_commit_callbacks):
    first = _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="zebra.txt", data=ZEBRA.encode())
    chunks = Chunk.objects.count()
    again = _upload(
        django_capture_on_commit_callbacks, corpus=corpus, filename="copy-of-zebra.txt", data=ZEBRA.encode()
    )
    assert again.pk == first.pk
    assert Chunk.objects.count() == chunks
    assert Document.objects.count() == 1
    assert Job.objects.filter(kind="corpora.ingest").count() == 1


def test_it_removes_a_deleted_documents_vectors_so_search_no_longer_returns_it(
    corpus, django_capture_on_commit_callbacks
):
    zebra = _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="zebra.txt", data=ZEBRA.encode())
    _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="volcano.txt", data=VOLCANO.encode())
    zebra_ids = set(zebra.chunks.values_list("vector_id", flat=True))
    assert chunk_search(corpus=corpus, query="striped zebras", retriever="dense", k=1)[0].chunk.document_id == zebra.pk
    document_delete(document=zebra)
    assert not (zebra_ids & _vector_ids(corpus))
    for retriever in ("dense", "bm25", "hybrid"):
        assert all(
            hit.chunk.document_id != zebra.pk
            for hit in chunk_search(corpus=corpus, query="striped zebras", retriever=retriever, k=5)
        )
    assert chunk_search(corpus=corpus, query="zebras", retriever="bm25") == []


@pytest.mark.parametrize(
    ("crash_at", "step_completes"),
    [("_chunks_replace", False), ("index_apply", False), ("index_apply", True), ("_documents_mark_ready", False)],
)
def test_it_leaves_exactly_one_copy_after_a_crash_and_a_retry(corpus, monkeypatch, crash_at, step_completes):
    document = document_upload(
        corpus=corpus, filename="zebra.txt", data=(ZEBRA + "\n\n" + VOLCANO).encode(), start_job=False
    )
    real = getattr(ingestion, crash_at)

    def crash(**kwargs):
        if step_completes:
            real(**kwargs)  # the step completes, then the worker dies before the next one
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(ingestion, crash_at, crash)
    with pytest.raises(KeyboardInterrupt):
        document_ingest(document=document)
    document.refresh_from_db()
    assert document.status == DocumentStatus.PROCESSING
    # A half-indexed document is never visible to search.
    assert chunk_search(corpus=corpus, query="zebras", retriever="hybrid") == []
    monkeypatch.setattr(ingestion, crash_at, real)
    document = document_ingest(document=document)
    assert document.status == DocumentStatus.READY
    chunk_ids = list(document.chunks.values_list("vector_id", flat=True))
    assert len(chunk_ids) == len(set(chunk_ids)) >= 1
    assert sorted(document.chunks.values_list("ordinal", flat=True)) == list(range(len(chunk_ids)))
    assert _vector_ids(corpus) == set(chunk_ids)
    assert corpus_index_store().for_search(corpus.pk).bm25_index.count == len(chunk_ids)


def test_it_rebuilds_an_index_from_the_database_that_searches_like_the_live_one(
    corpus, django_capture_on_commit_callbacks
):
    for name, text in (("zebra.txt", ZEBRA), ("volcano.txt", VOLCANO), ("coffee.txt", COFFEE)):
        _upload(django_capture_on_commit_callbacks, corpus=corpus, filename=name, data=text.encode())
    queries = ["black and white stripes", "lava and ash", "espresso pressure", "animals on the savanna"]
    live = {
        (q, r): [
            (h.chunk.pk, round(h.score, 4)) for h in chunk_search(corpus=corpus, query=q, retriever=r, k=3)
        ]
        for q in queries
        for r in ("dense", "bm25", "hybrid")
    }
    before = (corpus_index_store().folder(corpus.pk) / "dense" / "vectors.faiss").read_bytes()
    result = corpus_index_rebuild(corpus=corpus)
    assert result["chunks"] == Chunk.objects.count()
    assert (corpus_index_store().folder(corpus.pk) / "dense" / "vectors.faiss").read_bytes() != b"" and before
    rebuilt = {
        (q, r): [
            (h.chunk.pk, round(h.score, 4)) for h in chunk_search(corpus=corpus, query=q, retriever=r, k=3)
        ]
        for q in queries
        for r in ("dense", "bm25", "hybrid")
    }
    assert rebuilt == live


def test_it_reports_which_retrievers_found_each_hybrid_hit(corpus, django_capture_on_commit_callbacks):
    for name, text in (("zebra.txt", ZEBRA), ("volcano.txt", VOLCANO), ("coffee.txt", COFFEE)):
        _upload(django_capture_on_commit_callbacks, corpus=corpus, filename=name, data=text.encode())
    timings: dict = {}
    hits = chunk_search(corpus=corpus, query="Mount Etna volcano", retriever="hybrid", k=3, timings=timings)
    assert hits[0].chunk.document.filename == "volcano.txt"
    assert set(hits[0].retrievers) == {"dense", "bm25"}
    assert hits[0].retrievers["dense"][0] == 1 and hits[0].retrievers["bm25"][0] == 1
    assert all(set(h.retrievers) <= {"dense", "bm25"} and h.retrievers for h in hits)
    assert timings["embed_query_ms"] > 0 and timings["search_ms"] > 0
    dense = chunk_search(corpus=corpus, query="Mount Etna volcano", retriever="dense", k=3)
    assert all(set(h.retrievers) == {"dense"} for h in dense)


def test_it_searches_across_corpora_of_one_team(team_a, corpus, django_capture_on_commit_callbacks):
    other = corpus_create(team=team_a, name="Drinks", chunk_tokens=64, overlap_tokens=8)
    _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="zebra.txt", data=ZEBRA.encode())
    _upload(django_capture_on_commit_callbacks, corpus=other, filename="coffee.txt", data=COFFEE.encode())
    hits = chunk_search_many(corpora=[corpus, other], query="espresso coffee", retriever="hybrid", k=2)
    assert hits[0].chunk.document.corpus == other
    assert {h.chunk.document.corpus_id for h in hits} == {corpus.pk, other.pk}


def test_it_imports_jsonl_and_csv_records_as_one_document_each(corpus, django_capture_on_commit_callbacks):
    jsonl = (
        b'{"pid": "p1", "title": "Zebra", "text": "Zebras have stripes."}\n'
        b'{"pid": "p2", "title": "Volcano", "text": "Etna erupts often."}\n'
    )
    with django_capture_on_commit_callbacks(execute=True):
        created = documents_import_records(
            corpus=corpus,
            filename="passages.jsonl",
            data=jsonl,
            text_field="text",
            title_field="title",
            id_field="pid",
        )
    assert [d.external_id for d in created] == ["p1", "p2"]
    csv_data = b"id,name,body\nc1,Coffee,Espresso is strong coffee.\nc2,Tea,Green tea is mild.\n"
    with django_capture_on_commit_callbacks(execute=True):
        more = documents_import_records(
            corpus=corpus,
            filename="more.csv",
            data=csv_data,
            text_field="body",
            title_field="name",
            id_field="id",
        )
    assert len(more) == 2
    assert set(Document.objects.values_list("status", flat=True)) == {DocumentStatus.READY}
    assert Document.objects.get(external_id="c1").title == "Coffee"
    assert Chunk.objects.count() == 4
    hit = chunk_search(corpus=corpus, query="espresso", retriever="bm25", k=1)[0]
    assert hit.chunk.document.external_id == "c1"
    # Importing the same file again adds nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert documents_import_records(corpus=corpus, filename="passages.jsonl", data=jsonl, id_field="pid") == []


def test_it_keeps_search_team_scoped(team_a, team_b, django_capture_on_commit_callbacks):
    from django.http import Http404

    from apps.corpora.selectors import corpus_get

    theirs = corpus_create(team=team_b, name="Private")
    _upload(django_capture_on_commit_callbacks, corpus=theirs, filename="zebra.txt", data=ZEBRA.encode())
    with pytest.raises(Http404):
        corpus_get(team=team_a, corpus_id=theirs.pk)
    mine = corpus_create(team=team_a, name="Mine")
    assert chunk_search(corpus=corpus_get(team=team_a, corpus_id=mine.pk), query="zebras") == []
    assert chunk_search(corpus=corpus_get(team=team_b, corpus_id=theirs.pk), query="zebras")


def test_it_reloads_the_cached_index_only_when_the_files_change(corpus, django_capture_on_commit_callbacks):
    _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="zebra.txt", data=ZEBRA.encode())
    first = corpus_index_store().for_search(corpus.pk)
    assert corpus_index_store().for_search(corpus.pk) is first
    _upload(django_capture_on_commit_callbacks, corpus=corpus, filename="volcano.txt", data=VOLCANO.encode())
    second = corpus_index_store().for_search(corpus.pk)
    assert second is not first and second.vector_index.count == Chunk.objects.count()
    assert np.isfinite(second.vector_index.search(np.ones((1, 384), dtype=np.float32) / np.sqrt(384), 1)[0]).all()
