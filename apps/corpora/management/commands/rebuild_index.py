"""Rebuild a corpus's FAISS and BM25 indexes from the database."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.corpora.management.commands._corpus_ref import corpus_from_ref, progress_bar
from apps.corpora.services import corpus_index_rebuild


class Command(BaseCommand):
    help = "Rebuild the FAISS + BM25 indexes of a corpus (id or name) from the database"

    def add_arguments(self, parser) -> None:
        parser.add_argument("corpus", help="corpus id or name")
        parser.add_argument("--team", help="team slug, when several teams have a corpus of that name")

    def handle(self, *args, corpus: str, team: str | None, **options) -> None:
        target = corpus_from_ref(corpus, team)
        result = corpus_index_rebuild(corpus=target, progress=progress_bar(self.stdout))
        self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(f"rebuilt '{target.name}': {result['chunks']} chunks, {result['index_type']} index")
        )
