import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HANDBOOK = b"""Expense policy.

Travel must be booked through the company portal. Hotel stays are reimbursed up to 180 euros per night.

Security policy.

Laptops must use full-disk encryption. Passwords are rotated every 90 days and stored in the team vault.
"""


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.fixture
def data_root(settings, tmp_path):
    settings.DATA_ROOT = tmp_path
    return tmp_path


def test_a_team_uploads_searches_and_asks_with_citations(team_a, make_api_key, api_client, data_root, echo_model):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    corpus = client.post(
        "/api/v1/corpora", {"name": "Handbook", "chunk_tokens": 32, "overlap_tokens": 4}, format="json"
    ).json()
    uploaded = client.post(
        f"/api/v1/corpora/{corpus['id']}/documents",
        {"file": SimpleUploadedFile("handbook.txt", HANDBOOK, content_type="text/plain")},
        format="multipart",
    )
    assert uploaded.status_code == 201, uploaded.json()
    document = client.get(f"/api/v1/documents/{uploaded.json()[0]['id']}").json()
    assert document["status"] == "ready" and document["chunks"] >= 2

    hits = client.post(
        f"/api/v1/corpora/{corpus['id']}/search",
        {"query": "hotel reimbursement per night", "k": 2},
        format="json",
    ).json()
    assert "180 euros" in hits["results"][0]["text"]
    assert set(hits["results"][0]["retrievers"]) <= {"dense", "bm25"} and hits["results"][0]["retrievers"]

    bad = client.post(f"/api/v1/corpora/{corpus['id']}/search", {"query": "x", "retriever": "magic"}, format="json")
    assert bad.status_code == 400 and "dense" in bad.json()["error"]["message"]

    client.post(
        "/api/v1/pipelines",
        {"name": "handbook-qa", "model": "smollm2-135m-instruct", "corpora": [corpus["id"]], "top_k": 2},
        format="json",
    )
    answer = client.post(
        "/api/v1/queries",
        {"pipeline": "handbook-qa", "question": "How much is a hotel night reimbursed?"},
        format="json",
    ).json()
    assert answer["status"] == "succeeded"
    first = answer["citations"][0]
    assert first["document_title"] and first["end"] > first["start"]
    assert "180 euros" in first["snippet"]
    assert first["cited"] is True  # the echo model answers "... [1]"
    # One shape of `retrievers` in search hits and in citations: {name: {"rank", "score"}}.
    for retrievers in (hits["results"][0]["retrievers"], first["retrievers"]):
        assert retrievers and all(set(v) == {"rank", "score"} for v in retrievers.values()), retrievers
        assert all(isinstance(v["rank"], int) and isinstance(v["score"], float) for v in retrievers.values())
    # embed: the answer's quality check (workers.rag.quality), billed like any embedding
    assert {row["stage"] for row in answer["stages"]} == {"retrieve", "generate", "embed"}
    assert answer["quality_label"] in {"grounded", "weak", "unsupported"} and answer["support_score"] is not None


def test_a_corrupt_upload_fails_with_a_clear_error_and_loses_nothing(team_a, make_api_key, api_client, data_root):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    corpus = client.post("/api/v1/corpora", {"name": "Docs"}, format="json").json()
    good = client.post(
        f"/api/v1/corpora/{corpus['id']}/documents", {"file": SimpleUploadedFile("a.txt", HANDBOOK)}, format="multipart"
    ).json()[0]
    bad = client.post(
        f"/api/v1/corpora/{corpus['id']}/documents",
        {"file": SimpleUploadedFile("b.pdf", b"%PDF-1.4 garbage")},
        format="multipart",
    ).json()[0]
    assert client.get(f"/api/v1/documents/{bad['id']}").json()["status"] == "failed"
    assert "PDF" in client.get(f"/api/v1/documents/{bad['id']}").json()["error"]
    assert client.get(f"/api/v1/documents/{good['id']}").json()["status"] == "ready"


def test_another_teams_corpora_and_documents_are_404(team_a, team_b, make_api_key, api_client, data_root):
    own = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    corpus = own.post("/api/v1/corpora", {"name": "Secret"}, format="json").json()
    document = own.post(
        f"/api/v1/corpora/{corpus['id']}/documents", {"file": SimpleUploadedFile("s.txt", HANDBOOK)}, format="multipart"
    ).json()[0]
    other = _client(api_client, make_api_key(team_b, scopes=["admin"]))
    assert other.get(f"/api/v1/corpora/{corpus['id']}").status_code == 404
    assert other.patch(f"/api/v1/corpora/{corpus['id']}", {"name": "x"}, format="json").status_code == 404
    assert other.delete(f"/api/v1/corpora/{corpus['id']}").status_code == 404
    assert other.get(f"/api/v1/corpora/{corpus['id']}/documents").status_code == 404
    assert other.post(f"/api/v1/corpora/{corpus['id']}/search", {"query": "hotel"}, format="json").status_code == 404
    assert other.get(f"/api/v1/documents/{document['id']}").status_code == 404
    assert other.delete(f"/api/v1/documents/{document['id']}").status_code == 404
    assert other.get("/api/v1/corpora").json()["count"] == 0


def test_a_viewer_key_cannot_upload(team_a, make_api_key, api_client, data_root):
    admin = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    corpus = admin.post("/api/v1/corpora", {"name": "Docs"}, format="json").json()
    reader = _client(api_client, make_api_key(team_a, scopes=["read"]))
    response = reader.post(
        f"/api/v1/corpora/{corpus['id']}/documents", {"file": SimpleUploadedFile("a.txt", HANDBOOK)}, format="multipart"
    )
    assert response.status_code == 403
