"""manage.py ingest / search / rebuild_index, and the demo docs seeder."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.corpora.models import Corpus, Document, DocumentStatus
from tests.apps.corpora.conftest import COFFEE, VOLCANO, ZEBRA

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_it_ingests_searches_and_rebuilds_from_the_command_line(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "zebra.txt").write_text(ZEBRA)
    (folder / "volcano.md").write_text(VOLCANO)
    (folder / "coffee.txt").write_text(COFFEE)
    out = io.StringIO()
    call_command("ingest", corpus.name, str(folder / "*"), "--team", corpus.team.slug, stdout=out)
    assert "3/3 chunks embedded" in out.getvalue()
    assert "ingested 3 document(s)" in out.getvalue()
    assert corpus.documents.filter(status=DocumentStatus.READY).count() == 3

    out = io.StringIO()
    call_command("search", str(corpus.pk), "Mount Etna lava", "-k", "2", stdout=out)
    text = out.getvalue()
    assert text.splitlines()[0].startswith("1. [") and "volcano" in text.splitlines()[0]
    assert "dense #1" in text and "bm25 #1" in text

    out = io.StringIO()
    call_command("rebuild_index", corpus.name, stdout=out)
    assert "rebuilt 'Handbook': 3 chunks, flat index" in out.getvalue()

    with pytest.raises(CommandError):
        call_command("search", corpus.name, "x", "--retriever", "splade", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("search", "no such corpus", "x", stdout=io.StringIO())


def test_it_seeds_the_docs_corpus_idempotently(team_a, alice, settings, tmp_path):
    from apps.core.seeders import seed_docs_corpus

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Parsimony\n\nA cost-aware RAG service.")
    (tmp_path / "docs" / "operations.md").write_text("# Operations\n\nBack up DATA_ROOT and the database.")
    settings.BASE_DIR = tmp_path
    out = io.StringIO()
    seed_docs_corpus(team=team_a, user=alice, stdout=out)
    corpus = Corpus.objects.get(team=team_a, name="Parsimony docs")
    assert set(corpus.documents.values_list("title", flat=True)) == {"Parsimony", "Operations"}
    assert set(Document.objects.values_list("status", flat=True)) == {DocumentStatus.READY}
    chunks = sorted(corpus.documents.values_list("chunks__pk", flat=True))
    seed_docs_corpus(team=team_a, user=alice, stdout=out)
    assert "up to date" in out.getvalue()
    assert sorted(corpus.documents.values_list("chunks__pk", flat=True)) == chunks
