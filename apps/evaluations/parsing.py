"""Reading a labelled set: CSV or JSON Lines (or a JSON list), each question with one or more gold answers.

CSV: a header row with ``question`` and ``answer`` (or ``answers`` / ``gold``; several gold answers
separated by ``|``), and optionally ``id``. JSONL: one object a line with ``question``, ``answers``
(a list, or a string) or ``answer`` / ``gold``, and optionally ``id``. Anything else is refused with the
line at fault (``ValidationFailed``): nothing is stored from a file that does not read whole.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from apps.core.errors import ValidationFailed

MAX_BYTES = 5 * 1024 * 1024
MAX_QUESTIONS = 2000
MAX_QUESTION_CHARS = 4000
ANSWER_KEYS = ("answers", "answer", "gold")
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
# Shipped sets: name -> (file, description). Written for the demo corpus ``bootstrap_demo`` creates.
SHIPPED_SETS: dict[str, tuple[str, str]] = {
    "parsimony-docs": (
        "parsimony-docs.jsonl",
        "12 questions about Parsimony's README (the demo's 'Parsimony docs' corpus), gold answers quoted from it",
    ),
}


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        answers = [part.strip() for part in value.split("|")]
    elif isinstance(value, list) and all(isinstance(a, (str, int, float)) for a in value):
        answers = [str(a).strip() for a in value]
    else:
        raise ValidationFailed(f"{where}: the gold answer must be a string or a list of strings")
    answers = [a for a in answers if a]
    if not answers:
        raise ValidationFailed(f"{where}: no gold answer")
    return answers


def _item(raw: dict[str, Any], where: str, seen: set[str], position: int) -> dict[str, Any]:
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValidationFailed(f"{where}: no question")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValidationFailed(f"{where}: the question is longer than {MAX_QUESTION_CHARS} characters")
    key = next((k for k in ANSWER_KEYS if raw.get(k) not in (None, "")), None)
    if key is None:
        raise ValidationFailed(f"{where}: no gold answer (a column or key named {', '.join(ANSWER_KEYS)})")
    item_id = str(raw.get("id") or "").strip() or f"q{position}"
    if len(item_id) > 200:
        raise ValidationFailed(f"{where}: the id is longer than 200 characters")
    if item_id in seen:
        raise ValidationFailed(f"{where}: the id {item_id!r} is used twice")
    seen.add(item_id)
    return {"id": item_id, "question": question.strip(), "answers": _answers(raw[key], where)}


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"the file is not UTF-8 text (byte {exc.start})") from None


def _csv_items(text: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise ValidationFailed(f"the CSV cannot be read: {exc}") from None
    if "question" not in fields or not any(k in fields for k in ANSWER_KEYS):
        raise ValidationFailed(
            "the CSV header must name a 'question' column and an 'answer' (or 'answers', 'gold') column"
        )
    reader.fieldnames = fields
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        for n, row in enumerate(reader, start=1):
            if None in row:
                raise ValidationFailed(f"line {reader.line_num}: more cells than the header has columns")
            if not any((v or "").strip() for v in row.values()):
                continue
            items.append(_item(row, f"line {reader.line_num}", seen, n))
    except csv.Error as exc:
        raise ValidationFailed(f"line {reader.line_num}: the CSV cannot be read: {exc}") from None
    return items


def _json_items(text: str) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"the JSON cannot be read: {exc.msg} (line {exc.lineno})") from None
        numbered = [(f"item {n}", row) for n, row in enumerate(rows, start=1)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValidationFailed(f"line {n}: not a JSON object ({exc.msg})") from None
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for position, (where, row) in enumerate(numbered, start=1):
        if not isinstance(row, dict):
            raise ValidationFailed(f"{where}: not a JSON object")
        items.append(_item(row, where, seen, position))
    return items


def eval_items_parse(*, filename: str, data: bytes) -> list[dict[str, Any]]:
    """The items of an uploaded set (``[{"id", "question", "answers"}]``), or ValidationFailed saying why not."""
    if not data:
        raise ValidationFailed("the file is empty")
    if len(data) > MAX_BYTES:
        raise ValidationFailed(f"the file is larger than {MAX_BYTES // (1024 * 1024)} MB")
    text = _decode(data)
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".csv":
        items = _csv_items(text)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        items = _json_items(text)
    else:
        raise ValidationFailed(f"unknown file type {suffix or '(none)'!r}: upload a .csv, .jsonl or .json file")
    if not items:
        raise ValidationFailed("the file holds no questions")
    if len(items) > MAX_QUESTIONS:
        raise ValidationFailed(f"the file holds {len(items)} questions; at most {MAX_QUESTIONS} per set")
    return items


def shipped_items(name: str) -> list[dict[str, Any]]:
    """The items of a shipped set; an unknown name raises ValidationFailed listing the shipped ones."""
    if name not in SHIPPED_SETS:
        raise ValidationFailed(f"unknown shipped set {name!r} (shipped: {', '.join(sorted(SHIPPED_SETS))})")
    path = SHIPPED_DIR / SHIPPED_SETS[name][0]
    return _json_items(path.read_text(encoding="utf-8"))
