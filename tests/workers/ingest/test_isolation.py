"""Parsing under limits: zip bombs refused before their XML is parsed, the parser child bounded in
memory and time, and a failure costing only its own document."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from workers.ingest.isolation import IsolatedParser, ParseLimits, parse_document_isolated
from workers.ingest.parsers import DocumentParseError, check_zip_inflation, parse_document


def zip_bomb_docx(inflated_bytes: int = 30_000_000) -> bytes:
    """A valid .docx of a few tens of KB whose document.xml inflates to ``inflated_bytes`` of XML."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(_docx("PLACEHOLDER"))) as source, zipfile.ZipFile(out, "w") as bomb:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == "word/document.xml":
                data = data.replace(b"PLACEHOLDER", b"a" * inflated_bytes)
            bomb.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def _docx(text: str) -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_it_refuses_a_zip_bomb_docx_before_parsing_its_xml():
    bomb = zip_bomb_docx()
    assert len(bomb) < 100_000
    started = time.perf_counter()
    with pytest.raises(DocumentParseError) as refused:
        parse_document(filename="report.docx", data=bomb)
    assert time.perf_counter() - started < 1.0  # the XML (30 MB, ~30 s and ~700 MB to parse) never is
    assert "decompression bomb" in refused.value.message and "word/document.xml" in refused.value.message


def test_it_refuses_an_archive_that_inflates_past_the_total_limit():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("a.bin", b"\x00" * 300_000)
    with pytest.raises(DocumentParseError, match="inflates to 0.3 MB when decompressed, over the 0.1 MB limit"):
        check_zip_inflation(out.getvalue(), max_inflated_bytes=100_000, max_inflate_ratio=100, kind="Word document")


def test_it_parses_an_ordinary_docx_in_the_child_like_in_process():
    data = _docx("The quarterly memo discusses glaciers. " * 50)
    here = parse_document(filename="memo.docx", data=data)
    with IsolatedParser(ParseLimits()) as parser:
        there = parser.parse(filename="memo.docx", data=data)
        again = parser.parse(filename="memo.docx", data=data)
    assert there == here == again


def test_it_refuses_a_document_that_needs_more_memory_than_the_limit_and_goes_on_with_the_next():
    with IsolatedParser(ParseLimits(memory_bytes=120_000_000)) as parser:
        with pytest.raises(DocumentParseError, match="memory limit"):
            parser.parse(filename="deep.html", data=b"<div>" * 250_000)
        assert parser.parse(filename="ok.html", data=b"<p>still here</p>").text == "still here"


def test_it_stops_a_parse_that_overruns_its_time_and_goes_on_with_the_next():
    with IsolatedParser(ParseLimits(timeout_s=0.05)) as parser:
        with pytest.raises(DocumentParseError, match="longer than 0.05 s"):
            parser.parse(filename="long.html", data=b"<p>x</p>" * 300_000)
    with IsolatedParser(ParseLimits(timeout_s=30)) as parser:
        assert parser.parse(filename="ok.html", data=b"<p>fine</p>").text == "fine"


def test_it_decodes_plain_text_in_process_and_reports_corrupt_files_from_the_child():
    assert parse_document_isolated(filename="a.txt", data=b"hello").text == "hello"
    with pytest.raises(DocumentParseError, match="corrupt PDF"):
        parse_document_isolated(filename="x.pdf", data=b"%PDF-1.4\nnot a pdf")
    assert parse_document_isolated(filename="p.html", data=b"<title>T</title><p>body</p>").title == "T"
