"""docs/api.md's "Scopes per operation" table is what the code enforces, row by row; and the two cases
issue 24 found wrong: an ingest-only key checks its upload, a query-only key polls its own query."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from drf_spectacular.generators import EndpointEnumerator

from apps.api.permissions import IsTeamMember, view_scopes

API_DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def _documented() -> dict[str, set[str]]:
    text = API_DOC.read_text()
    section = text[text.index("### Scopes per operation"):]
    section = section[: section.index("\n### ", 5)]
    rows = re.findall(r"^\| `([A-Z]+ /\S+)` \| ([a-z ]+) \|$", section, flags=re.MULTILINE)
    return {operation: set(scopes.split(" or ")) for operation, scopes in rows}


def _enforced() -> dict[str, set[str]]:
    found = {}
    for path, _, method, callback in EndpointEnumerator().get_api_endpoints():
        view = callback.cls
        if any(isinstance(permission, IsTeamMember) for permission in view().get_permissions()):
            found[f"{method} {path}"] = set(view_scopes(view, method))
    return found


def test_it_documents_exactly_the_scopes_each_operation_requires():
    documented, enforced = _documented(), _enforced()
    assert len(enforced) > 40
    assert documented == enforced, {
        "undocumented": sorted(set(enforced) - set(documented)),
        "documented but absent": sorted(set(documented) - set(enforced)),
        "different": {op: (documented[op], enforced[op]) for op in set(documented) & set(enforced)
                      if documented[op] != enforced[op]},
    }


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.mark.django_db
def test_an_ingest_only_key_checks_the_status_of_its_upload(api_client, team_a, make_api_key, settings, tmp_path):
    from apps.corpora.models import Document, DocumentStatus
    from apps.corpora.services import corpus_create

    settings.DATA_ROOT = tmp_path
    corpus = corpus_create(team=team_a, name="Uploads")
    # A stored upload waiting for its job (the upload itself is covered in tests/apps/api/test_corpora_api.py).
    document = Document.objects.create(corpus=corpus, title="notes", filename="notes.txt", sha256="0" * 64,
                                       size=5, status=DocumentStatus.QUEUED)
    client = _client(api_client, make_api_key(team_a, scopes=["ingest"]))
    assert client.get(f"/api/v1/documents/{document.pk}").json()["status"] == "queued"
    assert client.get(f"/api/v1/corpora/{corpus.pk}/documents").json()["count"] == 1
    assert client.get("/api/v1/usage").status_code == 403


@pytest.mark.django_db
def test_a_query_only_key_polls_its_own_async_query_and_not_anothers(api_client, team_a, make_api_key,
                                                                    empty_pipeline):
    from apps.rag.models import QueryRun

    mine, other = make_api_key(team_a, scopes=["query"]), make_api_key(team_a, scopes=["query"])
    run = QueryRun.objects.create(team=team_a, pipeline=empty_pipeline, question="hi", api_key=mine.api_key)
    client = _client(api_client, mine)
    polled = client.get(f"/api/v1/queries/{run.pk}")
    assert polled.status_code == 200 and polled.json()["id"] == run.pk
    assert client.get("/api/v1/queries").status_code == 403  # the team's list needs read
    assert _client(api_client, other).get(f"/api/v1/queries/{run.pk}").status_code == 404
    reader = _client(api_client, make_api_key(team_a, scopes=["read"]))
    assert reader.get(f"/api/v1/queries/{run.pk}").status_code == 200
