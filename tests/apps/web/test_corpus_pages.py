"""Corpora, uploads with live progress, documents, search in the browser."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.core.models import Job
from apps.corpora.models import Corpus, Document, DocumentStatus

pytestmark = pytest.mark.django_db

ZEBRA = b"Zebras are African equines with black-and-white striped coats. Their stripes may deter biting flies."
VOLCANO = b"A volcano is a rupture in the crust of a planet where lava, ash and gases escape."


def _files(*pairs):
    return [SimpleUploadedFile(name, data, content_type="text/plain") for name, data in pairs]


def test_it_lists_and_creates_corpora(member_client, corpus):
    page = member_client.get("/corpora/")
    assert page.status_code == 200 and b"Handbook" in page.content
    assert b'<label for="id_name">' in page.content
    response = member_client.post(
        "/corpora/new/", {"name": "Wiki", "chunk_tokens": 128, "overlap_tokens": 16, "index_type": "auto"}
    )
    wiki = Corpus.objects.get(name="Wiki")
    assert response.status_code == 302 and response.url == f"/corpora/{wiki.pk}/"
    assert wiki.chunk_tokens == 128


def test_a_duplicate_corpus_name_is_shown_as_an_error(member_client, corpus):
    page = member_client.post(
        "/corpora/new/", {"name": "Handbook", "chunk_tokens": 64, "overlap_tokens": 8, "index_type": "auto"}
    )
    assert page.status_code == 400
    assert b"already has a corpus named" in page.content


def test_viewers_cannot_create_upload_or_delete(viewer_client, corpus):
    page = viewer_client.get(f"/corpora/{corpus.pk}/")
    assert page.status_code == 200
    assert b'type="file"' not in page.content and b"New corpus" not in viewer_client.get("/corpora/").content
    assert (
        viewer_client.post(
            "/corpora/new/", {"name": "X", "chunk_tokens": 64, "overlap_tokens": 8, "index_type": "auto"}
        ).status_code
        == 403
    )
    response = viewer_client.post(f"/corpora/{corpus.pk}/upload/", {"files": _files(("z.txt", ZEBRA))})
    assert response.status_code == 403
    assert not Document.objects.exists()
    assert viewer_client.post(f"/corpora/{corpus.pk}/delete/").status_code == 403


def test_members_upload_several_files_into_one_ingestion_job(member_client, corpus, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = member_client.post(
            f"/corpora/{corpus.pk}/upload/", {"files": _files(("zebra.txt", ZEBRA), ("volcano.md", VOLCANO))}
        )
    assert response.status_code == 302
    documents = Document.objects.filter(corpus=corpus)
    assert {d.filename for d in documents} == {"zebra.txt", "volcano.md"}
    assert {d.status for d in documents} == {DocumentStatus.QUEUED}
    job = Job.objects.get(kind="corpora.ingest")
    assert sorted(job.params["document_ids"]) == sorted(d.pk for d in documents)
    page = member_client.get(f"/corpora/{corpus.pk}/", follow=True)
    assert b"2 file(s) uploaded and queued" in page.content


def test_the_documents_table_polls_while_ingesting_and_shows_progress(
    member_client, corpus, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        member_client.post(f"/corpora/{corpus.pk}/upload/", {"files": _files(("zebra.txt", ZEBRA))})
    Job.objects.filter(kind="corpora.ingest").update(
        status="running", progress_done=3, progress_total=4, message="3 / 4 chunks embedded"
    )
    Document.objects.update(status=DocumentStatus.PROCESSING)
    rows = member_client.get(f"/corpora/{corpus.pk}/documents/", HTTP_HX_REQUEST="true")
    assert rows.status_code == 200
    body = rows.content.decode()
    assert 'hx-trigger="every 1s"' in body
    assert 'value="75"' in body and "3 / 4 chunks embedded" in body
    assert 'aria-live="polite"' in body
    Document.objects.update(status=DocumentStatus.READY)
    done = member_client.get(f"/corpora/{corpus.pk}/documents/", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in done and 'value="100"' in done


def test_a_refused_file_shows_its_error(member_client, corpus):
    member_client.post(f"/corpora/{corpus.pk}/upload/", {"files": _files(("tool.exe", b"MZ\x90\x00"))})
    document = Document.objects.get()
    assert document.status == DocumentStatus.FAILED
    page = member_client.get(f"/corpora/{corpus.pk}/")
    assert b"unsupported file type" in page.content


def test_an_upload_without_files_says_so(member_client, corpus):
    page = member_client.post(f"/corpora/{corpus.pk}/upload/", {}, follow=True)
    assert b"Choose at least one file" in page.content


def test_members_delete_documents_and_admins_delete_corpora(member_client, owner_client, corpus):
    member_client.post(f"/corpora/{corpus.pk}/upload/", {"files": _files(("tool.exe", b"MZ"))})
    document = Document.objects.get()
    assert member_client.post(f"/documents/{document.pk}/delete/").status_code == 302
    assert not Document.objects.exists()
    assert member_client.post(f"/corpora/{corpus.pk}/delete/").status_code == 403
    assert owner_client.post(f"/corpora/{corpus.pk}/delete/").status_code == 302
    assert not Corpus.objects.exists()


def test_another_teams_member_gets_404_for_every_corpus_url(outsider_client, member_client, corpus):
    member_client.post(f"/corpora/{corpus.pk}/upload/", {"files": _files(("tool.exe", b"MZ"))})
    document = Document.objects.get()
    for url in (f"/corpora/{corpus.pk}/", f"/corpora/{corpus.pk}/documents/", f"/documents/{document.pk}/"):
        assert outsider_client.get(url).status_code == 404, url
    for url in (f"/corpora/{corpus.pk}/upload/", f"/corpora/{corpus.pk}/delete/", f"/documents/{document.pk}/delete/"):
        assert outsider_client.post(url).status_code == 404, url
    assert b"Handbook" not in outsider_client.get("/corpora/").content
    assert Document.objects.filter(pk=document.pk).exists()


@pytest.mark.slow
def test_search_highlights_hits_and_the_document_page_marks_the_passage(member_client, corpus, team_a):
    from apps.corpora.services import document_upload, documents_ingest

    docs = [
        document_upload(corpus=corpus, filename=name, data=data, start_job=False)
        for name, data in (("zebra.txt", ZEBRA + b" <b>bold</b> & co"), ("volcano.txt", VOLCANO))
    ]
    documents_ingest(documents=docs)
    page = member_client.get(f"/corpora/{corpus.pk}/", {"q": "zebras stripes", "retriever": "hybrid"})
    body = page.content.decode()
    assert "<mark>Zebras</mark>" in body and "<mark>stripes</mark>" in body
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in body  # the text is escaped, only marks are HTML
    chunk = docs[0].chunks.first()
    assert f"?chunk={chunk.pk}&amp;q=zebras%20stripes#chunk-{chunk.pk}" in body
    document_page = member_client.get(f"/documents/{docs[0].pk}/", {"chunk": chunk.pk})
    assert f'id="chunk-{chunk.pk}" class="chunk cited"'.encode() in document_page.content
    assert b'class="cited-span"' in document_page.content
