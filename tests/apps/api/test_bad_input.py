"""The bad-input set of issue 24, sent the way an attacker would: deep JSON to every JSON endpoint,
content parts whose text is not a string, names that `str.isdigit()` takes for ids, an out-of-range
compression target, NaN, oversize uploads (refused while they stream in), a zip-bomb .docx and an
off-site `next`. Each answers its own 4xx in the error shape; none answers 5xx."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIRequest
from django.test import RequestFactory
from drf_spectacular.generators import SchemaGenerator

from apps.core.request_limits import RequestLimitsMiddleware

pytestmark = pytest.mark.django_db

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def admin_client(api_client, team_a, make_api_key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(team_a, scopes=['admin']).raw_key}")
    return api_client


def _json_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation whose schema takes a JSON body, its ids filled in (any id: the
    depth check runs before any view looks an object up)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


def test_it_refuses_deeply_nested_json_on_every_json_endpoint_with_400(admin_client):
    operations = _json_operations()
    assert len(operations) >= 15 and ("POST", "/v1/chat/completions") in operations, operations
    for method, path in operations:
        response = admin_client.generic(method, path, DEEP, content_type="application/json")
        assert response.status_code == 400, (method, path, response.status_code, response.content[:300])
        assert response.json()["error"]["code"] == "json_too_deep", (method, path)


def test_it_refuses_deep_json_in_the_parser_too_where_no_length_was_declared():
    from rest_framework.exceptions import ParseError

    from apps.api.parsers import BoundedJSONParser

    with pytest.raises(ParseError) as refused:
        BoundedJSONParser().parse(io.BytesIO(DEEP))
    assert refused.value.detail.code == "json_too_deep"
    with pytest.raises(ParseError) as refused:
        BoundedJSONParser().parse(io.BytesIO(b'{"k": NaN}'))
    assert refused.value.detail.code == "json_invalid"
    assert BoundedJSONParser().parse(io.BytesIO(b'{"a": [[1], {"b": "[[[[["}]}')) == {"a": [[1], {"b": "[[[[["}]}


def test_it_answers_413_for_a_json_body_over_its_limit(admin_client, settings):
    settings.PARSIMONY_MAX_JSON_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = admin_client.post("/api/v1/queries", {"pipeline": "x", "question": "q" * 2000}, format="json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    openai = admin_client.post("/v1/embeddings", {"model": "m", "input": "q" * 2000}, format="json")
    assert openai.status_code == 413 and openai.json()["error"]["type"] == "invalid_request_error"


def test_it_refuses_chat_content_parts_whose_text_is_not_a_string(admin_client, empty_pipeline):
    for content in ([{"type": "text", "text": 5}], [{"type": "text", "text": {"a": 1}}], [7], {"text": "hi"}):
        response = admin_client.post(
            "/v1/chat/completions",
            {"model": empty_pipeline.name, "messages": [{"role": "user", "content": content}]},
            format="json",
        )
        assert response.status_code == 400, (content, response.content[:300])
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("name", ["¹", "٣", "²³", "99999999999999999999999", "-1", " 1"])
def test_it_answers_names_that_only_look_like_ids_with_400_naming_the_pipeline_or_agent(admin_client, name):
    query = admin_client.post("/api/v1/queries", {"pipeline": name, "question": "hi"}, format="json")
    assert query.status_code == 400 and query.json()["error"]["code"] == "unknown_pipeline"
    run = admin_client.post("/api/v1/agent-runs", {"agent": name, "request": "hi"}, format="json")
    assert run.status_code == 400 and run.json()["error"]["code"] == "unknown_agent"
    chat = admin_client.post(
        "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "hi"}]}, format="json"
    )
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"


def test_it_finds_no_corpus_for_a_reference_that_only_looks_like_an_id(team_a):
    from django.core.management.base import CommandError
    from django.http import Http404

    from apps.corpora.management.commands._corpus_ref import corpus_from_ref
    from apps.corpora.selectors import corpus_get_by_name_or_id

    for ref in ("¹", "٣", "9" * 30):
        with pytest.raises(Http404):
            corpus_get_by_name_or_id(team=team_a, ref=ref)
        with pytest.raises(CommandError):
            corpus_from_ref(ref)


@pytest.mark.parametrize("target", [5, 1.5, 0, -0.5, 16.5, 2_000_000, "NaN"])
def test_it_refuses_a_compression_target_outside_its_range(admin_client, empty_pipeline, target):
    body = {"name": "compressed", "model": "smollm2-135m-instruct", "compression_target": target}
    created = admin_client.post("/api/v1/pipelines", body, format="json")
    assert created.status_code == 400, created.content[:300]
    patched = admin_client.patch(
        f"/api/v1/pipelines/{empty_pipeline.pk}", {"compression_target": target}, format="json"
    )
    assert patched.status_code == 400 and "compression_target" in json.dumps(patched.json())


@pytest.mark.parametrize("target", [0.33, 1, 16, 400])
def test_it_accepts_a_compression_share_or_a_whole_token_budget(admin_client, empty_pipeline, target):
    patched = admin_client.patch(
        f"/api/v1/pipelines/{empty_pipeline.pk}", {"compression_target": target}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["compression_target"] == target


def test_it_refuses_nan_in_a_json_body(admin_client, empty_pipeline):
    response = admin_client.generic(
        "PATCH", f"/api/v1/pipelines/{empty_pipeline.pk}", b'{"compression_target": NaN}',
        content_type="application/json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "json_invalid"


def test_it_answers_413_for_an_upload_over_the_file_limit(admin_client, team_a, settings):
    from apps.corpora.services import corpus_create

    settings.PARSIMONY_MAX_UPLOAD_BYTES = 10_000
    corpus = corpus_create(team=team_a, name="Uploads")
    response = admin_client.post(
        f"/api/v1/corpora/{corpus.pk}/documents",
        {"file": SimpleUploadedFile("big.txt", b"x" * 50_000, content_type="text/plain")},
        format="multipart",
    )
    assert response.status_code == 413, response.content[:300]
    assert response.json()["error"]["code"] == "request_too_large"
    assert "big.txt" in response.json()["error"]["message"] and corpus.documents.count() == 0


class _CountingStream(io.RawIOBase):
    """A request body of ``size`` bytes made on demand, counting what the server reads of it."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head, self.size, self.read_bytes = head, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        if n <= 0:
            return 0
        start = self.read_bytes
        chunk = (self.head[start:start + n] if start < len(self.head) else b"") or b"x" * n
        chunk = (chunk + b"x" * n)[:n]
        buffer[:n] = chunk
        self.read_bytes += n
        return n


def _call_middleware(stream: _CountingStream, length: int, content_type: str):
    environ = RequestFactory().generic("POST", "/api/v1/corpora/1/documents").META
    environ.update(CONTENT_TYPE=content_type, CONTENT_LENGTH=str(length), **{"wsgi.input": stream})
    wsgi_request = WSGIRequest(environ)
    return RequestLimitsMiddleware(lambda r: pytest.fail("the view must not run"))(wsgi_request)


def test_it_stops_reading_an_upload_once_the_file_is_past_its_limit(settings):
    settings.PARSIMONY_MAX_UPLOAD_BYTES = 1_000_000
    body_size = 200_000_000  # 200 MB declared and available: only about the first megabyte is read
    head = (b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\n")
    stream = _CountingStream(head, body_size)
    response = _call_middleware(stream, body_size, "multipart/form-data; boundary=BOUNDARY")
    assert response.status_code == 413 and json.loads(response.content)["error"]["code"] == "request_too_large"
    assert stream.read_bytes < 3_000_000, stream.read_bytes


def test_it_refuses_a_body_over_the_request_limit_without_reading_it(settings):
    stream = _CountingStream(b"", 300_000_000)
    response = _call_middleware(stream, 300_000_000, "multipart/form-data; boundary=BOUNDARY")
    assert response.status_code == 413 and stream.read_bytes == 0
    assert json.loads(response.content)["error"]["detail"]["limit_bytes"] == settings.PARSIMONY_MAX_REQUEST_BYTES


@pytest.mark.slow  # the ingestion job loads the embedding model
def test_it_fails_a_zip_bomb_docx_with_a_reason(team_a, alice, django_capture_on_commit_callbacks):
    from apps.corpora.models import DocumentStatus
    from apps.corpora.services import corpus_create, document_upload
    from tests.workers.ingest.test_isolation import zip_bomb_docx

    corpus = corpus_create(team=team_a, name="Bombs")
    with django_capture_on_commit_callbacks(execute=True):
        bomb = document_upload(corpus=corpus, filename="report.docx", data=zip_bomb_docx(), user=alice)
    bomb.refresh_from_db()
    assert bomb.status == DocumentStatus.FAILED and "decompression bomb" in bomb.error, bomb.error


def test_it_never_redirects_off_site_after_a_team_switch(client, alice, team_a):
    client.force_login(alice)
    for target in ("https://evil.example/", "//evil.example/x", "http://evil.example", "\\\\evil.example",
                   "javascript:alert(1)"):
        response = client.post("/team/switch/", {"team_id": team_a.pk, "next": target})
        assert response.status_code == 302 and response["Location"] == "/", (target, response["Location"])
    inside = client.post("/team/switch/", {"team_id": team_a.pk, "next": "/corpora/?q=1"})
    assert inside["Location"] == "/corpora/?q=1"
    odd = client.post("/team/switch/", {"team_id": "¹", "next": "/corpora/"})
    assert odd.status_code == 302


def test_it_answers_unknown_api_urls_with_404_in_the_error_shape(admin_client):
    rest = admin_client.delete("/api/v1/pipelines/true")
    assert rest.status_code == 404 and rest.json()["error"]["code"] == "not_found"
    openai = admin_client.post("/v1/nothing\nhere", {}, format="json")
    assert openai.status_code == 404 and openai.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [("corpora", [10**30]), ("fixed_context_corpus", 10**30),
                                         ("corpora", [-1]), ("top_k", 10**30), ("max_output_tokens", -5)])
def test_it_answers_out_of_range_numbers_in_a_pipeline_with_400(admin_client, empty_pipeline, field, value):
    response = admin_client.patch(f"/api/v1/pipelines/{empty_pipeline.pk}", {field: value}, format="json")
    assert response.status_code == 400, (field, value, response.status_code, response.content[:300])


def test_it_answers_out_of_range_ids_in_a_budget_with_400(admin_client):
    body = {"scope": "api_key", "api_key": 10**30, "period": "day", "hard_limit": "1.00"}
    response = admin_client.post("/api/v1/budgets", body, format="json")
    assert response.status_code == 400, response.content[:300]


@pytest.mark.parametrize("body", [{"query": 0}, {"query": "hotels", "k": "5"}, {"query": "hotels", "k": True},
                                  {"query": ["hotels"]}, {"query": "hotels", "retriever": 1}])
def test_it_takes_each_json_field_in_its_own_type_only(admin_client, team_a, body):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team_a, name="Typed")
    response = admin_client.post(f"/api/v1/corpora/{corpus.pk}/search", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_failed", body
    as_number = admin_client.post("/api/v1/queries", {"pipeline": 5, "question": "hi"}, format="json")
    assert as_number.status_code == 400 and "pipeline" in as_number.json()["error"]["detail"]["fields"]


def test_it_reads_api_bodies_as_json_only_but_uploads_as_multipart(admin_client):
    response = admin_client.post("/api/v1/queries", {"pipeline": "x", "question": "hi"}, format="multipart")
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_it_still_takes_text_parts_and_ignores_parts_without_text():
    from apps.api.openai_format import message_text
    from apps.api.openai_views import ChatCompletionInputSerializer

    parts = [{"type": "text", "text": "What is "}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
             {"type": "text", "text": "six times seven?"}]
    data = ChatCompletionInputSerializer(data={"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert data.is_valid(), data.errors
    assert message_text(data.validated_data["messages"][0]["content"]) == "What is six times seven?"
