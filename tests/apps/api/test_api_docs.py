"""The API's documentation: operations tagged by resource, docs pages that load nothing from outside,
one documented shape of `retrievers`, the favicon."""

from __future__ import annotations

import importlib
import re

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_every_operation_is_tagged_by_its_resource(schema):
    tags = {(method, path): operation["tags"] for path, method, operation in _operations(schema)}
    assert all(len(t) == 1 and t != ["api"] and t != ["v1"] for t in tags.values()), tags
    assert tags[("post", "/api/v1/corpora/{corpus_id}/search")] == ["Corpora"]
    assert tags[("post", "/api/v1/corpora/{corpus_id}/documents")] == ["Documents"]
    assert tags[("get", "/api/v1/documents/{document_id}")] == ["Documents"]
    assert tags[("get", "/api/v1/agent-runs/{run_id}")] == ["Agent runs"]
    assert tags[("post", "/v1/chat/completions")] == ["OpenAI-compatible"]
    assert tags[("get", "/api/v1/me")] == ["Account"]
    used = {t[0] for t in tags.values()}
    assert len(used) >= 10
    assert [t["name"] for t in schema["tags"]][:3] == ["Account", "Corpora", "Documents"]
    assert {t["name"] for t in schema["tags"]} == used and all(t["description"] for t in schema["tags"])
    # The operation ids did not change with the tags.
    assert {o["operationId"] for _, _, o in _operations(schema)} >= {"api_v1_corpora_search_create"}


def test_retrievers_have_one_documented_shape_in_search_hits_and_citations(schema):
    components = schema["components"]["schemas"]
    rank = {"$ref": "#/components/schemas/RetrieverRank"}
    assert components["SearchHit"]["properties"]["retrievers"]["additionalProperties"] == rank
    assert components["Citation"]["properties"]["retrievers"]["additionalProperties"] == rank
    assert set(components["RetrieverRank"]["properties"]) == {"rank", "score"}
    citations = components["QueryRunOutput"]["properties"]["citations"]
    assert citations["items"] == {"$ref": "#/components/schemas/Citation"}


def test_the_pipeline_writes_citations_in_that_shape():
    from workers.rag.pipeline import RetrievedChunk, citations

    chunk = RetrievedChunk(chunk_id=1, document_id=2, title="T", text="x", start=0, end=1, score=0.5,
                           retrievers={"dense": (1, 0.5), "bm25": (3, 2.25)})
    assert citations([chunk], "x [1]")[0]["retrievers"] == {
        "dense": {"rank": 1, "score": 0.5}, "bm25": {"rank": 3, "score": 2.25},
    }


def test_the_migration_rewrites_stored_citations_and_back():
    migration = importlib.import_module("apps.rag.migrations.0007_citation_retrievers_as_objects")
    stored = [{"n": 1, "retrievers": {"dense": [1, 0.9], "bm25": [2, 3.5]}}, {"n": 2}]
    assert migration._as_objects(stored) is True
    assert stored[0]["retrievers"] == {"dense": {"rank": 1, "score": 0.9}, "bm25": {"rank": 2, "score": 3.5}}
    assert migration._as_objects(stored) is False  # already converted: untouched
    assert migration._as_lists(stored) is True and stored[0]["retrievers"]["dense"] == [1, 0.9]


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


def test_the_api_docs_pages_load_nothing_from_outside(client):
    for url in ("/api/docs/", "/api/docs/?script", "/api/redoc/"):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert not EXTERNAL.search(html), (url, EXTERNAL.search(html))
        assert "googleapis" not in html and "jsdelivr" not in html and "unpkg" not in html, url
    redoc = client.get("/api/redoc/").content.decode()
    bundle = re.search(r'<script src="([^"]+)"', redoc).group(1)
    assert bundle.startswith("/static/") and client.get(bundle).status_code == 200


def test_the_favicon_is_served_and_linked(client, alice):
    icon = client.get("/favicon.ico", follow=True)
    assert icon.status_code == 200 and b"<svg" in b"".join(icon.streaming_content)
    client.force_login(alice)
    home = client.get("/").content.decode()
    href = re.search(r'<link rel="icon" href="([^"]+)"', home).group(1)
    assert client.get(href).status_code == 200
    assert 'rel="icon"' in client.get("/api/redoc/").content.decode()


def test_the_admin_links_the_favicon(client, make_user):
    client.force_login(make_user("root", is_superuser=True))
    assert 'rel="icon"' in client.get("/admin/").content.decode()


def test_the_schema_is_valid_openapi(schema):
    """Client generators reject an invalid document: the schema validates against OpenAPI 3.0's own schema
    (nullable fields as ``nullable: true``, not 3.1's ``type: [..., "null"]``)."""
    from drf_spectacular.validation import validate_schema

    validate_schema(schema)
    assert [node for node in _walk(schema) if isinstance(node.get("type"), list)] == []
    openai_error = schema["components"]["schemas"]["OpenAIError"]["properties"]["error"]["properties"]
    assert openai_error["code"] == openai_error["param"] == {"type": "string", "nullable": True}


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
