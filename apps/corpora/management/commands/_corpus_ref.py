"""Shared by the corpora commands: find a corpus by id or name, optionally within a team (by slug)."""

from __future__ import annotations

from django.core.management.base import CommandError

from apps.accounts.models import Team
from apps.core.scoping import id_from_ref
from apps.corpora.models import Corpus


def corpus_from_ref(ref: str, team_slug: str | None = None) -> Corpus:
    queryset = Corpus.objects.select_related("team")
    if team_slug:
        team = Team.objects.filter(slug=team_slug).first()
        if team is None:
            raise CommandError(f"no team with slug {team_slug!r}")
        queryset = queryset.filter(team=team)
    pk = id_from_ref(ref)
    if pk is not None:
        corpus = queryset.filter(pk=pk).first() or queryset.filter(name=ref).first()
        if corpus is None:
            raise CommandError(f"no corpus with id or name {ref!r}")
        return corpus
    matches = list(queryset.filter(name=ref)[:2])
    if not matches:
        raise CommandError(f"no corpus named {ref!r}" + (f" in team {team_slug!r}" if team_slug else ""))
    if len(matches) > 1:
        raise CommandError(f"several teams have a corpus named {ref!r}: pass --team <slug> or the corpus id")
    return matches[0]


def progress_bar(stdout, width: int = 30):
    """A text progress bar for ``progress(done, total, message)`` callbacks."""

    def report(done: int, total: int | None = None, message: str | None = None) -> None:
        total = total or 0
        filled = int(width * done / total) if total else 0
        stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks embedded", ending="")
        stdout.flush()

    return report
