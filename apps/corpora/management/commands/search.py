"""Search a corpus from the shell and print ranked hits with retriever provenance."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.core.errors import ValidationFailed
from apps.corpora.management.commands._corpus_ref import corpus_from_ref
from apps.corpora.selectors import chunk_search


class Command(BaseCommand):
    help = 'Search a corpus: manage.py search <corpus> "<query>" -k 5 [--retriever hybrid]'

    def add_arguments(self, parser) -> None:
        parser.add_argument("corpus", help="corpus id or name")
        parser.add_argument("query")
        parser.add_argument("-k", type=int, default=5)
        parser.add_argument("--retriever", default="hybrid")
        parser.add_argument("--team", help="team slug, when several teams have a corpus of that name")

    def handle(self, *args, corpus: str, query: str, k: int, retriever: str, team: str | None, **options) -> None:
        target = corpus_from_ref(corpus, team)
        timings: dict = {}
        try:
            hits = chunk_search(corpus=target, query=query, retriever=retriever, k=k, timings=timings)
        except ValidationFailed as exc:
            raise CommandError(exc.message) from exc
        if not hits:
            self.stdout.write("no results")
        for rank, hit in enumerate(hits, start=1):
            provenance = ", ".join(f"{name} #{r} ({s:.3f})" for name, (r, s) in sorted(hit.retrievers.items()))
            chunk = hit.chunk
            snippet = " ".join(chunk.text.split())[:200]
            self.stdout.write(f"{rank}. [{hit.score:.4f}] {chunk.document} (chunk {chunk.ordinal}) <- {provenance}")
            self.stdout.write(f"   {snippet}")
        self.stdout.write(
            f"{retriever}: {len(hits)} hit(s); query embedding {timings.get('embed_query_ms', 0):.1f} ms, "
            f"search {timings.get('search_ms', 0):.1f} ms"
        )
