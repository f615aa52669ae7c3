"""Corpus create, update and delete; settings are validated against the engine's registries."""

from __future__ import annotations

import shutil
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.core.errors import ValidationFailed
from apps.corpora.models import Chunk, Corpus
from apps.corpora.selectors import corpus_index_store
from apps.corpora.services.storage import upload_dir


def _validate_corpus_settings(*, embedding_model: str, chunk_tokens: int, overlap_tokens: int, index_type: str) -> None:
    from indexes.vector_index import VALID_INDEX_TYPES
    from workers.runtime.embedders import resolve_model_path

    if index_type not in VALID_INDEX_TYPES:
        raise ValidationFailed(
            f"unknown index type {index_type!r} (valid: {', '.join(VALID_INDEX_TYPES)})",
            detail={"index_type": index_type, "valid": list(VALID_INDEX_TYPES)},
        )
    if chunk_tokens < 1:
        raise ValidationFailed("chunk_tokens must be at least 1")
    if overlap_tokens < 0 or overlap_tokens >= chunk_tokens:
        raise ValidationFailed("overlap_tokens must be at least 0 and smaller than chunk_tokens")
    try:
        resolve_model_path(embedding_model)
    except (ValueError, ImportError) as exc:
        raise ValidationFailed(str(exc), detail={"embedding_model": embedding_model}) from exc


def corpus_create(
    *,
    team: Any,
    name: str,
    user: Any = None,
    description: str = "",
    embedding_model: str | None = None,
    chunk_tokens: int = 256,
    overlap_tokens: int = 32,
    index_type: str = "auto",
) -> Corpus:
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("a corpus needs a name")
    embedding_model = embedding_model or settings.PARSIMONY_DEFAULT_EMBEDDING_MODEL
    _validate_corpus_settings(
        embedding_model=embedding_model, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens, index_type=index_type
    )
    if Corpus.objects.filter(team=team, name=name).exists():
        raise ValidationFailed(f"this team already has a corpus named {name!r}", detail={"name": name})
    try:
        with transaction.atomic():
            return Corpus.objects.create(
                team=team,
                name=name,
                description=description,
                embedding_model=embedding_model,
                chunk_tokens=chunk_tokens,
                overlap_tokens=overlap_tokens,
                index_type=index_type,
                created_by=user if getattr(user, "pk", None) else None,
            )
    except IntegrityError as exc:
        raise ValidationFailed(f"this team already has a corpus named {name!r}", detail={"name": name}) from exc


def corpus_update(
    *,
    corpus: Corpus,
    name: str | None = None,
    description: str | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
    index_type: str | None = None,
    embedding_model: str | None = None,
) -> Corpus:
    """Change a corpus. Chunking changes apply to documents ingested from now on; changing the
    embedding model of a corpus that has chunks is refused (its vectors would not compare)."""
    new = {
        "name": corpus.name if name is None else name.strip(),
        "description": corpus.description if description is None else description,
        "chunk_tokens": corpus.chunk_tokens if chunk_tokens is None else chunk_tokens,
        "overlap_tokens": corpus.overlap_tokens if overlap_tokens is None else overlap_tokens,
        "index_type": corpus.index_type if index_type is None else index_type,
        "embedding_model": corpus.embedding_model if embedding_model is None else embedding_model,
    }
    if not new["name"]:
        raise ValidationFailed("a corpus needs a name")
    _validate_corpus_settings(
        embedding_model=new["embedding_model"],
        chunk_tokens=new["chunk_tokens"],
        overlap_tokens=new["overlap_tokens"],
        index_type=new["index_type"],
    )
    if new["embedding_model"] != corpus.embedding_model and Chunk.objects.filter(document__corpus=corpus).exists():
        raise ValidationFailed("the embedding model of a corpus with documents cannot change; create a new corpus")
    if (
        new["name"] != corpus.name
        and Corpus.objects.filter(team_id=corpus.team_id, name=new["name"]).exclude(pk=corpus.pk).exists()
    ):
        raise ValidationFailed(f"this team already has a corpus named {new['name']!r}")
    for key, value in new.items():
        setattr(corpus, key, value)
    corpus.save()
    return corpus


def corpus_delete(*, corpus: Corpus) -> None:
    """Delete the corpus, its documents, chunks, stored files and index folder."""
    corpus_id, uploads = corpus.pk, upload_dir(corpus)
    with transaction.atomic():
        corpus.delete()
    corpus_index_store().remove(corpus_id)
    shutil.rmtree(uploads, ignore_errors=True)
