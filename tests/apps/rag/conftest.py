"""Shared pieces of the RAG pipeline tests."""

from __future__ import annotations

from types import SimpleNamespace


def fake_search_hits(monkeypatch, passages: list[tuple[str, str]], first_pk: int = 100) -> list[SimpleNamespace]:
    """Make retrieval return these (title, text) passages as chunk hits, best first (no index needed:
    the pipeline's later stages are what these tests look at)."""
    from apps.corpora import selectors

    found = [
        SimpleNamespace(
            chunk=SimpleNamespace(pk=first_pk + n, text=text, document=SimpleNamespace(title=title), document_id=n,
                                  char_start=0, char_end=len(text)),
            score=1.0 - n / 10, retrievers={"dense": (n + 1, 1.0 - n / 10)},
        )
        for n, (title, text) in enumerate(passages)
    ]
    monkeypatch.setattr(selectors, "chunk_search_many", lambda **kwargs: found)
    return found
