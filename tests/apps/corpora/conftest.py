"""Shared fixtures for the corpora tests: a temporary DATA_ROOT, a corpus, small real documents."""

from __future__ import annotations

import io

import pytest

from apps.corpora.services import corpus_create


@pytest.fixture(autouse=True)
def _data_root(settings, tmp_path):
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()
    from indexes import corpus_store

    corpus_store.cache_clear()
    yield
    corpus_store.cache_clear()


@pytest.fixture
def corpus(team_a, alice):
    return corpus_create(team=team_a, name="Handbook", user=alice, chunk_tokens=64, overlap_tokens=8)


def make_pdf(text_lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with real text (Helvetica), xref offsets computed."""
    content = (
        "BT /F1 12 Tf 72 720 Td 14 TL "
        + " ".join(
            "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '"
            for line in text_lines
        )
        + " ET"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content.encode()) + content.encode() + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def make_docx(paragraphs: list[str]) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


ZEBRA = (
    "Zebras are African equines with distinctive black-and-white striped coats. "
    "Their stripes may deter biting flies.\n\nZebras live in herds on the savanna."
)
VOLCANO = (
    "A volcano is a rupture in the crust of a planet where lava, ash and gases escape. "
    "Mount Etna in Sicily is one of the most active volcanoes in the world."
)
COFFEE = "Espresso is brewed by forcing hot water through finely ground coffee beans under pressure."
