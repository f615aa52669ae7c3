"""The original bytes of uploaded documents, stored under ``DATA_ROOT/uploads/<team>/<corpus>/``.

Files are named by their sha256 and written atomically (temp file + rename), so identical
uploads share one file and a reader never sees half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.conf import settings

from apps.corpora.models import Corpus, Document


def upload_dir(corpus: Corpus) -> Path:
    return Path(settings.DATA_ROOT) / "uploads" / str(corpus.team_id) / str(corpus.pk)


def original_store(*, corpus: Corpus, sha256: str, ext: str, data: bytes, fsync: bool = True) -> str:
    """Write the original bytes atomically (temp file + rename); returns the path relative to DATA_ROOT."""
    folder = upload_dir(corpus)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}{ext}"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return str(target.relative_to(Path(settings.DATA_ROOT)))


def original_read(document: Document) -> bytes:
    """The stored bytes of ``document``; DocumentParseError when they were never stored or are gone."""
    from workers.ingest.parsers import DocumentParseError

    if not document.file_path:
        raise DocumentParseError("the original file was not stored")
    try:
        return (Path(settings.DATA_ROOT) / document.file_path).read_bytes()
    except FileNotFoundError as exc:
        raise DocumentParseError("the original file is missing from storage") from exc


def original_remove(file_path: str) -> None:
    (Path(settings.DATA_ROOT) / file_path).unlink(missing_ok=True)


def safe_filename(filename: str) -> str:
    return os.path.basename((filename or "").replace("\\", "/")).strip() or "upload"


def default_title(filename: str) -> str:
    stem = os.path.splitext(filename)[0]
    return stem.replace("_", " ").strip() or "Untitled"
