"""Demo seeders run by ``manage.py bootstrap_demo``: each takes (team, user, stdout) and is idempotent."""

from __future__ import annotations

from collections.abc import Callable

SEEDERS: list[Callable] = []


def seed_docs_corpus(team, user, stdout) -> None:
    """The "Parsimony docs" corpus: README.md and docs/*.md, ingested through the real pipeline.

    Idempotent: files already ingested (same sha256) are skipped; changed files are added.
    """
    from pathlib import Path

    from django.conf import settings

    from apps.corpora.models import Corpus, DocumentStatus
    from apps.corpora.services import corpus_create, document_upload, documents_ingest

    corpus = Corpus.objects.filter(team=team, name="Parsimony docs").first() or corpus_create(
        team=team, name="Parsimony docs", user=user, description="Parsimony's own README and docs/"
    )
    root = Path(settings.BASE_DIR)
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    queued = []
    for path in paths:
        if path.is_file():
            document = document_upload(corpus=corpus, filename=path.name, data=path.read_bytes(), user=user, start_job=False)
            if document.status in (DocumentStatus.QUEUED, DocumentStatus.PROCESSING):
                queued.append(document)
    if queued:
        result = documents_ingest(documents=queued)
        stdout.write(f"Corpus 'Parsimony docs': ingested {result['ready']} document(s), {result['chunks']} chunks.")
    else:
        stdout.write("Corpus 'Parsimony docs': up to date.")


SEEDERS.append(seed_docs_corpus)
