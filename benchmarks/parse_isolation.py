"""Parse isolation: what parsing an upload in the limited child process costs against parsing it in-process.

    .venv/bin/python -m benchmarks.parse_isolation --json out/parse_isolation.json

Three small real documents (a 20-paragraph .docx, a 30-line PDF, a 300-paragraph HTML page) are
parsed `--repeats` times each with `workers.ingest.parsers.parse_document` in this process and with
`workers.ingest.isolation.parse_document_isolated` (the warm child); the medians and their difference
per document, and the cold start of a child (a new interpreter, the parser imports, one .docx), are
printed and written as JSON. No Django, no database.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import write_json


def _docx() -> bytes:
    import docx

    document = docx.Document()
    for _ in range(20):
        document.add_paragraph("The quarterly memo discusses glaciers melting in Greenland. " * 5)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _pdf() -> bytes:
    from tests.workers.conftest import make_pdf

    return make_pdf(["Parsimony keeps retrieval costs low."] * 30)


def _html() -> bytes:
    return b"<html><title>T</title><body>" + b"<p>Budgets are enforced before work runs.</p>" * 300 + b"</body></html>"


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from workers.ingest.isolation import IsolatedParser, ParseLimits, parse_document_isolated
    from workers.ingest.parsers import parse_document

    files = {"memo.docx": _docx(), "report.pdf": _pdf(), "page.html": _html()}
    started = time.perf_counter()
    with IsolatedParser(ParseLimits()) as cold:
        cold.parse(filename="memo.docx", data=files["memo.docx"])
    result: dict = {"cold_start_ms": round((time.perf_counter() - started) * 1000, 1), "documents": {}}
    print(f"cold start of a child (interpreter, imports, first .docx): {result['cold_start_ms']:.0f} ms")
    for name, data in files.items():
        parse_document_isolated(filename=name, data=data)  # the shared child is warm from here on
        here = _median_ms(lambda name=name, data=data: parse_document(filename=name, data=data), args.repeats)
        isolated = _median_ms(
            lambda name=name, data=data: parse_document_isolated(filename=name, data=data), args.repeats
        )
        result["documents"][name] = {"bytes": len(data), "in_process_ms": round(here, 2),
                                     "isolated_ms": round(isolated, 2), "overhead_ms": round(isolated - here, 2)}
        print(f"{name:11s} {len(data):6d} B  in-process {here:6.1f} ms  isolated {isolated:6.1f} ms  "
              f"overhead {isolated - here:+5.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result, newline=True)


if __name__ == "__main__":
    main()
