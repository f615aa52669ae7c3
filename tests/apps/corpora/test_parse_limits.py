"""A hostile document in a batch fails alone, with its reason; the documents beside it are ingested."""

from __future__ import annotations

import pytest

from apps.corpora.models import DocumentStatus
from apps.corpora.services import document_upload, documents_ingest
from tests.apps.corpora.conftest import ZEBRA
from tests.workers.ingest.test_isolation import zip_bomb_docx

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_a_zip_bomb_fails_with_its_reason_and_the_rest_of_the_batch_is_ingested(corpus, alice, settings):
    bomb = document_upload(corpus=corpus, filename="bomb.docx", data=zip_bomb_docx(), user=alice, start_job=False)
    slow = document_upload(corpus=corpus, filename="slow.html", data=b"<p>x</p>" * 2_000_000, user=alice,
                           start_job=False)
    zebra = document_upload(corpus=corpus, filename="zebra.txt", data=ZEBRA.encode(), user=alice, start_job=False)
    settings.PARSIMONY_PARSE_TIMEOUT_S = 0.5
    result = documents_ingest(documents=[bomb, slow, zebra])
    for document in (bomb, slow, zebra):
        document.refresh_from_db()
    assert bomb.status == DocumentStatus.FAILED and "decompression bomb" in bomb.error
    assert slow.status == DocumentStatus.FAILED and "longer than 0.5 s" in slow.error
    assert zebra.status == DocumentStatus.READY and zebra.chunks.count() >= 1
    assert (result["ready"], result["failed"]) == (1, 2)
