from __future__ import annotations

import pytest

from tests.workers.conftest import make_pdf
from workers.ingest.parsers import DocumentParseError, check_size, iter_records, parse_document


def test_it_reads_plain_text_and_markdown_titles():
    doc = parse_document(filename="notes.md", data=b"# Budget plan\n\nSpend   less.\n\n\n\nSave more.")
    assert doc.title == "Budget plan"
    assert doc.media_type == "text/markdown"
    assert doc.text == "# Budget plan\n\nSpend less.\n\nSave more."


def test_it_falls_back_to_replacement_characters_for_bad_utf8():
    doc = parse_document(filename="latin.txt", data="caf\xe9 au lait".encode("latin-1"))
    assert doc.text == "caf\ufffd au lait"
    assert doc.title == "latin"


def test_it_rejects_binary_data_named_txt():
    with pytest.raises(DocumentParseError, match="corrupt text file"):
        parse_document(filename="x.txt", data=b"MZ\x00\x00\x90binary")


def test_it_keeps_only_visible_html_text():
    html = b"""<html><head><title>Page title</title><style>p{color:red}</style></head>
    <body><script>alert('hidden')</script><noscript>enable js</noscript>
    <template><p>template text</p></template><h1>Heading</h1><p>Visible paragraph.</p></body></html>"""
    doc = parse_document(filename="page.html", data=html)
    assert doc.title == "Page title"
    assert "Visible paragraph." in doc.text and "Heading" in doc.text
    for hidden in ("alert", "color:red", "enable js", "template text"):
        assert hidden not in doc.text


def test_it_extracts_pdf_text(pdf_bytes):
    doc = parse_document(filename="report.pdf", data=pdf_bytes)
    assert "Parsimony keeps costs low." in doc.text
    assert doc.media_type == "application/pdf"


def test_it_reports_a_corrupt_pdf():
    with pytest.raises(DocumentParseError, match="corrupt PDF"):
        parse_document(filename="broken.pdf", data=b"%PDF-1.4\nthis is not a pdf at all")


def test_it_reports_a_pdf_without_text(blank_pdf_bytes):
    with pytest.raises(DocumentParseError, match="document contains no text"):
        parse_document(filename="scan.pdf", data=blank_pdf_bytes)


def test_it_reads_docx_paragraphs_and_tables(docx_bytes):
    doc = parse_document(filename="q3.docx", data=docx_bytes)
    assert doc.title == "Quarterly report"
    assert "Revenue grew in the third quarter." in doc.text
    assert "Region | Sales" in doc.text and "North | 42" in doc.text


def test_it_reports_a_corrupt_docx():
    with pytest.raises(DocumentParseError, match="corrupt Word document"):
        parse_document(filename="x.docx", data=b"PK\x03\x04 nope")


def test_it_rejects_unsupported_types_listing_the_supported_ones():
    with pytest.raises(DocumentParseError) as info:
        parse_document(filename="setup.exe", data=b"MZ")
    assert str(info.value).startswith("unsupported file type '.exe' (supported: .txt, .md")


def test_it_uses_the_media_type_when_there_is_no_extension():
    doc = parse_document(filename="upload", data=b"<p>hello</p>", media_type="text/html; charset=utf-8")
    assert doc.text == "hello"


def test_it_rejects_empty_documents():
    with pytest.raises(DocumentParseError, match="document contains no text"):
        parse_document(filename="empty.txt", data=b"  \n\n \t")


def test_it_checks_the_size_limit():
    check_size(50_000_000, 50_000_000)
    with pytest.raises(DocumentParseError, match=r"^file is 61.2 MB, over the 50 MB limit$"):
        check_size(61_200_000, 50_000_000)


def test_it_iterates_jsonl_records():
    data = b'{"id": "a", "title": "One", "text": "first"}\n\n{"id": 2, "text": "second"}\n'
    records = list(iter_records(filename="bulk.jsonl", data=data, id_field="id"))
    assert [(r.external_id, r.title, r.text) for r in records] == [
        ("a", "One", "first"),
        ("2", "Record 3", "second"),
    ]


def test_it_names_the_bad_jsonl_line():
    data = b'{"text": "ok"}\n{"text": broken}\n'
    with pytest.raises(DocumentParseError, match="^line 2: invalid JSON"):
        list(iter_records(filename="bulk.jsonl", data=data))


def test_it_iterates_csv_records_and_names_bad_rows():
    data = b'title,text\nA,"multi\nline text"\nB,\n'
    records = iter_records(filename="bulk.csv", data=data)
    first = next(records)
    assert (first.title, first.text) == ("A", "multi\nline text")
    with pytest.raises(DocumentParseError, match="^line 4: field 'text' is empty"):
        next(records)


def test_it_requires_the_text_column_in_csv():
    with pytest.raises(DocumentParseError, match="no 'text' column"):
        list(iter_records(filename="bulk.csv", data=b"title,body\nA,B\n"))


# --- titles: junk metadata falls back to the first heading, then to the file name


def _with_pdf_metadata(pdf: bytes, outline: str | None = None, **info: str) -> bytes:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_metadata({f"/{key}": value for key, value in info.items()})
    if outline:
        writer.add_outline_item(title=outline, page_number=0)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _docx(*paragraphs: tuple[str, str | None], title: str | None = None) -> bytes:
    import io

    import docx

    document = docx.Document()
    document.core_properties.title = title or ""
    for text, style in paragraphs:
        document.add_paragraph(text, style=style)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


@pytest.mark.parametrize("junk", ["about:blank", "Untitled", "", "  ", "Document1", "Microsoft Word - policy.doc",
                                  "C:\\Users\\ann\\policy.pdf", "1234"])
def test_a_pdfs_junk_title_falls_back_to_its_first_heading(junk):
    pdf = _with_pdf_metadata(make_pdf(["Zebra Field Guide", "Zebras have stripes."]), Title=junk)
    assert parse_document(filename="scan_0042.pdf", data=pdf).title == "Zebra Field Guide"


def test_a_pdf_without_a_heading_falls_back_to_its_file_name():
    pdf = _with_pdf_metadata(make_pdf(["Zebras have stripes and live in herds."]), Title="about:blank")
    assert parse_document(filename="zebra_notes.pdf", data=pdf).title == "zebra notes"


def test_a_pdf_titled_with_its_generators_name_uses_the_heading():
    pdf = _with_pdf_metadata(make_pdf(["Volcano Safety", "Keep away from lava."]), Title="Microsoft Word",
                             Producer="Microsoft Word", Creator="Microsoft Word")
    assert parse_document(filename="v.pdf", data=pdf).title == "Volcano Safety"


def test_a_pdfs_outline_is_its_first_heading_and_a_real_title_wins():
    body = make_pdf(["Zebras have stripes."])
    assert parse_document(filename="z.pdf", data=_with_pdf_metadata(body, outline="Chapter 1: Zebras",
                                                                     Title="untitled")).title == "Chapter 1: Zebras"
    real = _with_pdf_metadata(body, outline="Chapter 1", Title="The Zebra Book")
    assert parse_document(filename="z.pdf", data=real).title == "The Zebra Book"


def test_a_docx_without_a_title_is_named_by_its_first_heading():
    data = _docx(("Intro text before the heading.", None), ("Security Policy", "Heading 1"),
                 ("Passwords are long.", None))
    assert parse_document(filename="policy-final-v3.docx", data=data).title == "Security Policy"
    junk = _docx(("Security Policy", "Title"), ("Passwords are long.", None), title="Untitled")
    assert parse_document(filename="p.docx", data=junk).title == "Security Policy"
    plain = _docx(("Passwords are long.", None), title="about:blank")
    assert parse_document(filename="password_rules.docx", data=plain).title == "password rules"


def test_an_html_pages_junk_title_falls_back_to_its_h1():
    html = b"<html><head><title>about:blank</title></head><body><h1>Coffee</h1><p>Espresso.</p></body></html>"
    assert parse_document(filename="c.html", data=html).title == "Coffee"
