"""Turn uploaded bytes into plain text.

Pure Python, no Django: the corpora services call these with the stored bytes and
turn `DocumentParseError` into a failed Document with the message shown to the user,
so every message must make sense to a person who only uploaded a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".html", ".htm", ".pdf", ".docx")
RECORD_EXTENSIONS: tuple[str, ...] = (".jsonl", ".csv")

# Media types map onto the same parsers, for uploads whose name has no extension.
_MEDIA_TYPE_EXTENSIONS: dict[str, str] = {
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "text/html": ".html",
    "application/xhtml+xml": ".html",
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
}
_EXTENSION_MEDIA_TYPES: dict[str, str] = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
# Elements whose content a reader never sees.
_INVISIBLE_HTML_TAGS = ("script", "style", "noscript", "template", "head", "iframe", "svg", "object")


class DocumentParseError(ValueError):
    """The document cannot be turned into text; `str(error)` is a message for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    title: str
    media_type: str


@dataclass(frozen=True)
class Record:
    """One document of a bulk (.jsonl / .csv) import."""

    title: str
    text: str
    external_id: str | None


def _format_mb(size: int) -> str:
    return f"{size / 1_000_000:.1f}".rstrip("0").rstrip(".")


def check_size(size: int, limit_bytes: int) -> None:
    """Raise when an upload is over the limit (decimal MB, as users read file sizes)."""
    if size > limit_bytes:
        raise DocumentParseError(
            f"file is {_format_mb(size)} MB, over the {_format_mb(limit_bytes)} MB limit"
        )


def _extension(filename: str, media_type: str | None) -> str:
    ext = os.path.splitext(filename or "")[1].lower()
    if ext:
        return ext
    if media_type:
        return _MEDIA_TYPE_EXTENSIONS.get(media_type.split(";")[0].strip().lower(), "")
    return ""


def _default_title(filename: str) -> str:
    stem = os.path.splitext(os.path.basename(filename or ""))[0]
    return stem.replace("_", " ").strip() or "Untitled"


# Titles that say nothing: what editors, converters and browsers write when nobody typed a title.
_JUNK_TITLES = frozenset(
    {
        "about:blank", "untitled", "untitled document", "no title", "notitle", "title", "document", "doc",
        "new document", "blank", "none", "null", "nil", "n/a", "na", "unknown", "default", "(anonymous)",
        "anonymous", "page", "slide 1", "presentation", "powerpoint presentation", "microsoft word document",
        "word document", "pdf", "untitled-1", "document1", "document 1", "text", "draft", "template",
    }
)
_JUNK_PATTERNS = (
    re.compile(r"^microsoft (word|powerpoint|excel) - ", re.IGNORECASE),  # "Microsoft Word - report.doc"
    re.compile(r"^(untitled|document|doc|new document|presentation)[\s_-]*\d*$", re.IGNORECASE),
    re.compile(r"\.(docx?|pdf|rtf|odt|tex|dvi|ps|indd|pages|txt|html?|pptx?|xlsx?)$", re.IGNORECASE),  # a file name
    re.compile(r"^[a-z]+:[/\\]", re.IGNORECASE),  # a URL or a Windows path: "file:///…", "C:\\…", "https://…"
    re.compile(r"^/"),  # a path
)
_TITLE_MAX_CHARS = 200


def is_junk_title(title: str | None, *, generators: tuple[str | None, ...] = ()) -> bool:
    """True when a metadata title says nothing about the document: empty, a placeholder ("about:blank",
    "Untitled", "Document1"), a file name or path, no letters at all, or the name of the program that
    wrote the file (a PDF's Producer/Creator: "Microsoft Word", "LaTeX with hyperref")."""
    text = " ".join((title or "").split())
    if not text or len(text) > _TITLE_MAX_CHARS:
        return True
    lowered = text.lower()
    if lowered in _JUNK_TITLES or not any(ch.isalpha() for ch in text):
        return True
    if any(pattern.search(text) for pattern in _JUNK_PATTERNS):
        return True
    for generator in generators:
        name = " ".join((generator or "").split()).lower()
        if name and (lowered == name or (len(lowered) >= 4 and name.startswith(lowered))):
            return True
    return False


def choose_title(candidates: list[str | None], *, filename: str, generators: tuple[str | None, ...] = ()) -> str:
    """The first candidate (metadata title, then first heading) that is not junk, else the file name."""
    for candidate in candidates:
        if not is_junk_title(candidate, generators=generators):
            return " ".join((candidate or "").split())
    return _default_title(filename)


def _first_line_heading(text: str) -> str | None:
    """The first line of a PDF's first page when it reads like a heading (short, no closing period)."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        words = line.split()
        if len(line) <= 100 and len(words) <= 14 and not line.endswith((".", ",", ";", ":")):
            return line
        return None
    return None


def decode_text(data: bytes) -> str:
    """Decode plain-text bytes.

    UTF-8 (with or without BOM) first; then UTF-16 when a BOM says so; otherwise
    UTF-8 with replacement characters, so one stray Latin-1 byte does not lose a
    whole document. NUL bytes mean binary data renamed to .txt: reject it rather
    than index garbage.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DocumentParseError(f"corrupt text file: invalid UTF-16 ({exc.reason})") from exc
    if b"\x00" in data:
        raise DocumentParseError("corrupt text file: it contains binary data (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def _normalise_whitespace(text: str) -> str:
    """Collapse runs of spaces inside lines and runs of blank lines, keeping paragraph breaks."""
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    blank = False
    for line in lines:
        if line:
            out.append(line)
            blank = False
        elif not blank and out:
            out.append("")
            blank = True
    return "\n".join(out).strip()


def _parse_markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip() or None
        if stripped:
            return None
    return None


def _parse_html(data: bytes) -> tuple[str, list[str | None]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    for tag in soup.find_all(_INVISIBLE_HTML_TAGS):
        tag.decompose()
    # Block elements become line breaks so paragraphs survive for the chunker.
    text = soup.get_text("\n")
    h1 = soup.find("h1")
    return text, [title, h1.get_text(" ", strip=True) if h1 else None]


def _pdf_outline_first_title(reader) -> str | None:
    """The first bookmark of a PDF's outline: the first heading, when the file has an outline."""
    try:
        outline = reader.outline
    except Exception:  # noqa: BLE001 - the outline is optional; a broken one is not fatal
        return None
    while isinstance(outline, list) and outline:
        outline = outline[0]
    title = getattr(outline, "title", None)
    return str(title) if title else None


def _parse_pdf(data: bytes) -> tuple[str, list[str | None], tuple[str | None, ...]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception as exc:  # noqa: BLE001 - any failure means we cannot read it
                raise DocumentParseError("encrypted PDF: it needs a password") from exc
        pages = [page.extract_text() or "" for page in reader.pages]
        title: str | None = None
        generators: tuple[str | None, ...] = ()
        try:
            meta = reader.metadata
            if meta:
                title = meta.title or None
                generators = (meta.producer, meta.creator)
        except Exception:  # noqa: BLE001 - metadata is optional; a broken info dict is not fatal
            title = None
        heading = _pdf_outline_first_title(reader) or _first_line_heading(pages[0] if pages else "")
    except DocumentParseError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise DocumentParseError(f"corrupt PDF: {exc}") from exc
    return "\n\n".join(pages), [title, heading], generators


# Zip-based documents (.docx; .xlsx, .pptx, .odt alike) inflate before they are parsed: a few
# kilobytes of repeated XML can grow a thousandfold. Both limits are checked on the archive's
# directory, before anything is decompressed (Python's zipfile never inflates an entry past the
# size its directory declares: a lying entry fails its CRC check instead).
DEFAULT_MAX_INFLATED_BYTES = 200_000_000
DEFAULT_MAX_INFLATE_RATIO = 100
_RATIO_CHECKED_FROM = 1_000_000  # small entries may compress very well without being a threat


def check_zip_inflation(data: bytes, *, max_inflated_bytes: int, max_inflate_ratio: int, kind: str) -> None:
    """Refuse (DocumentParseError) a zip archive whose entries inflate past ``max_inflated_bytes``
    in all, or whose entry of more than 1 MB inflates more than ``max_inflate_ratio`` times."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DocumentParseError(f"corrupt {kind}: {exc}") from exc
    total = sum(entry.file_size for entry in entries)
    if total > max_inflated_bytes:
        raise DocumentParseError(
            f"{kind} refused: it inflates to {_format_mb(total)} MB when decompressed, over the "
            f"{_format_mb(max_inflated_bytes)} MB limit"
        )
    for entry in entries:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > _RATIO_CHECKED_FROM and ratio > max_inflate_ratio:
            raise DocumentParseError(
                f"{kind} refused: its part {entry.filename!r} inflates from {entry.compress_size:,} bytes to "
                f"{_format_mb(entry.file_size)} MB ({ratio:,.0f} times, over the limit of {max_inflate_ratio}): "
                "it looks like a decompression bomb"
            )


def _parse_docx(
    data: bytes,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    max_inflate_ratio: int = DEFAULT_MAX_INFLATE_RATIO,
) -> tuple[str, list[str | None]]:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    check_zip_inflation(
        data, max_inflated_bytes=max_inflated_bytes, max_inflate_ratio=max_inflate_ratio, kind="Word document"
    )
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DocumentParseError(f"corrupt Word document: {exc}") from exc
    parts: list[str] = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            cells: list[str] = []
            for cell in row.cells:
                cell_text = cell.text.strip()
                # Merged cells repeat the same object across the row.
                if cell_text and (not cells or cells[-1] != cell_text):
                    cells.append(cell_text)
            if cells:
                parts.append(" | ".join(cells))
        parts.append("")
    return "\n\n".join(parts), [document.core_properties.title or None, _docx_first_heading(document)]


def _docx_first_heading(document) -> str | None:
    """The text of the first paragraph styled Title or Heading n."""
    for paragraph in document.paragraphs:
        try:
            style = (paragraph.style.name or "") if paragraph.style is not None else ""
        except (KeyError, ValueError, AttributeError):
            style = ""
        if (style == "Title" or style.startswith("Heading")) and paragraph.text.strip():
            return paragraph.text.strip()
    return None


def parse_document(
    *,
    filename: str,
    data: bytes,
    media_type: str | None = None,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    max_inflate_ratio: int = DEFAULT_MAX_INFLATE_RATIO,
) -> ParsedDocument:
    """Extract the visible text of one uploaded document.

    The extension decides the parser (the media type only when there is no
    extension: browsers guess media types badly). Raises DocumentParseError for
    unsupported types, corrupt files, documents without text and zip-based documents
    that inflate past ``max_inflated_bytes`` or ``max_inflate_ratio`` (``check_zip_inflation``).
    Runs in the calling process: hostile input goes through ``isolation.parse_document_isolated``.
    """
    ext = _extension(filename, media_type)
    if ext not in SUPPORTED_EXTENSIONS:
        shown = f"'{ext}'" if ext else "without an extension"
        raise DocumentParseError(
            f"unsupported file type {shown} (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    # Title candidates in order (metadata, then the first heading); junk ones are skipped, the file
    # name is the last resort (choose_title).
    candidates: list[str | None] = []
    generators: tuple[str | None, ...] = ()
    if ext in (".txt", ".md"):
        text = decode_text(data)
        if ext == ".md":
            candidates = [_parse_markdown_title(text)]
    elif ext in (".html", ".htm"):
        text, candidates = _parse_html(data)
    elif ext == ".pdf":
        text, candidates, generators = _parse_pdf(data)
    else:
        text, candidates = _parse_docx(data, max_inflated_bytes, max_inflate_ratio)
    text = _normalise_whitespace(text)
    if not text:
        raise DocumentParseError("document contains no text")
    return ParsedDocument(
        text=text,
        title=choose_title(candidates, filename=filename, generators=generators),
        media_type=_EXTENSION_MEDIA_TYPES[ext],
    )


def _field_str(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def iter_records(
    *,
    filename: str,
    data: bytes,
    text_field: str = "text",
    title_field: str = "title",
    id_field: str | None = None,
) -> Iterator[Record]:
    """Yield one Record per line of a .jsonl file or per row of a .csv file.

    A bad line raises DocumentParseError naming its 1-based line number, so the
    user can fix the file; records with an empty text are errors too (an empty
    document would fail later, with less context).
    """
    ext = os.path.splitext(filename or "")[1].lower()
    if ext not in RECORD_EXTENSIONS:
        raise DocumentParseError(
            f"unsupported bulk import type '{ext}' (supported: {', '.join(RECORD_EXTENSIONS)})"
        )
    text = decode_text(data)
    if ext == ".jsonl":
        yield from _iter_jsonl(text, text_field, title_field, id_field)
    else:
        yield from _iter_csv(text, text_field, title_field, id_field)


def _make_record(row: dict, line: int, text_field: str, title_field: str, id_field: str | None) -> Record:
    if text_field not in row:
        raise DocumentParseError(f"line {line}: missing field '{text_field}'")
    text = _field_str(row.get(text_field)).strip()
    if not text:
        raise DocumentParseError(f"line {line}: field '{text_field}' is empty")
    title = _field_str(row.get(title_field)).strip()
    external_id: str | None = None
    if id_field is not None:
        external_id = _field_str(row.get(id_field)).strip() or None
        if external_id is None:
            raise DocumentParseError(f"line {line}: missing field '{id_field}'")
    return Record(title=title or f"Record {line}", text=text, external_id=external_id)


def _iter_jsonl(text: str, text_field: str, title_field: str, id_field: str | None) -> Iterator[Record]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentParseError(f"line {number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DocumentParseError(f"line {number}: expected a JSON object, got {type(row).__name__}")
        yield _make_record(row, number, text_field, title_field, id_field)


def _iter_csv(text: str, text_field: str, title_field: str, id_field: str | None) -> Iterator[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise DocumentParseError(f"line 1: invalid CSV header ({exc})") from exc
    if not header:
        raise DocumentParseError("line 1: the CSV file has no header row")
    if text_field not in header:
        raise DocumentParseError(
            f"line 1: the CSV header has no '{text_field}' column (columns: {', '.join(header)})"
        )
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DocumentParseError(f"line {reader.line_num}: invalid CSV ({exc})") from exc
        line = reader.line_num
        if None in row:  # more cells than header columns
            raise DocumentParseError(
                f"line {line}: {len(header) + len(row[None])} cells, header has {len(header)}"
            )
        yield _make_record(row, line, text_field, title_field, id_field)
