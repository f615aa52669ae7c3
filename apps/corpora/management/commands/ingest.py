"""Ingest files into a corpus, synchronously in this process, with a progress bar."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.corpora.management.commands._corpus_ref import corpus_from_ref, progress_bar
from apps.corpora.models import DocumentStatus
from apps.corpora.services import document_upload, documents_import_records, documents_ingest

RECORD_EXTENSIONS = (".jsonl", ".csv")


class Command(BaseCommand):
    help = "Ingest a file, a folder or a glob into a corpus (by id or name): manage.py ingest <corpus> <path or glob>"

    def add_arguments(self, parser) -> None:
        parser.add_argument("corpus", help="corpus id or name")
        parser.add_argument("paths", nargs="+", help="files, folders or glob patterns (quote globs)")
        parser.add_argument("--team", help="team slug, when several teams have a corpus of that name")
        parser.add_argument("--text-field", default="text", help="for .jsonl/.csv bulk imports")
        parser.add_argument("--title-field", default="title")
        parser.add_argument("--id-field", default=None)

    def handle(self, *args, corpus: str, paths: list[str], team: str | None, **options) -> None:
        target = corpus_from_ref(corpus, team)
        files: list[Path] = []
        for pattern in paths:
            matched = sorted(glob.glob(pattern, recursive=True)) or ([pattern] if os.path.exists(pattern) else [])
            for match in matched:
                path = Path(match)
                files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
        if not files:
            raise CommandError(f"nothing matches {' '.join(paths)}")
        documents, skipped = [], 0
        for path in files:
            data = path.read_bytes()
            if path.suffix.lower() in RECORD_EXTENSIONS:
                documents.extend(
                    documents_import_records(
                        corpus=target,
                        filename=path.name,
                        data=data,
                        text_field=options["text_field"],
                        title_field=options["title_field"],
                        id_field=options["id_field"],
                        start_job=False,
                    )
                )
                continue
            document = document_upload(corpus=target, filename=path.name, data=data, start_job=False)
            if document.status == DocumentStatus.FAILED:
                self.stderr.write(f"{path}: failed: {document.error}")
            elif document.status == DocumentStatus.QUEUED:
                documents.append(document)
            else:
                skipped += 1
        self.stdout.write(
            f"{len(documents)} document(s) to ingest into '{target.name}' (#{target.pk}), {skipped} already there"
        )
        result = documents_ingest(documents=documents, progress=progress_bar(self.stdout))
        self.stdout.write("")
        for document in documents:
            if document.status == DocumentStatus.FAILED:
                self.stderr.write(f"{document.filename}: failed: {document.error}")
        self.stdout.write(
            self.style.SUCCESS(
                f"ingested {result['ready']} document(s), {result['chunks']} chunks, {result['failed']} failed"
            )
        )
