"""Uploading a labelled set: CSV and JSONL read whole or are refused with the line at fault, nothing stored."""

from __future__ import annotations

import pytest

from apps.core.errors import ValidationFailed
from apps.evaluations.models import EvalSet
from apps.evaluations.parsing import SHIPPED_SETS, eval_items_parse, shipped_items
from apps.evaluations.services import eval_set_from_shipped, eval_set_upload

pytestmark = pytest.mark.django_db


def test_it_reads_a_csv_with_several_gold_answers_and_optional_ids():
    data = "id,question,answer\nq-a,Who?,Röntgen|Wilhelm Röntgen\n,When?,1901\n".encode()
    assert eval_items_parse(filename="set.csv", data=data) == [
        {"id": "q-a", "question": "Who?", "answers": ["Röntgen", "Wilhelm Röntgen"]},
        {"id": "q2", "question": "When?", "answers": ["1901"]},
    ]


def test_it_reads_jsonl_and_a_json_list():
    jsonl = b'{"question": "Who?", "answers": ["A", "B"], "id": 7}\n\n{"question": "When?", "answer": "1901"}\n'
    assert eval_items_parse(filename="set.jsonl", data=jsonl) == [
        {"id": "7", "question": "Who?", "answers": ["A", "B"]},
        {"id": "q2", "question": "When?", "answers": ["1901"]},
    ]
    assert eval_items_parse(filename="set.json", data=b'[{"question": "Who?", "gold": "A"}]')[0]["answers"] == ["A"]


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("set.jsonl", b'{"question": "Who?", "answers": ["A"]}\n{"question": "When?", "answ',
         "line 2: not a JSON object"),
        ("set.jsonl", b'{"question": "Who?"}\n', "line 1: no gold answer"),
        ("set.jsonl", b'{"answers": ["A"]}\n', "line 1: no question"),
        ("set.jsonl", b'["a list"]\n', "item 1: not a JSON object"),
        ("set.jsonl", b'7\n', "line 1: not a JSON object"),
        ("set.jsonl", b'{"id": 1, "question": "a", "answers": "x"}\n{"id": 1, "question": "b", "answers": "y"}',
         "line 2: the id '1' is used twice"),
        ("set.csv", b"query,reply\nWho?,A\n", "must name a 'question' column"),
        ("set.csv", b"question,answer\nWho?,A,extra\n", "line 2: more cells than the header"),
        ("set.csv", b"question,answer\nWho?,\n", "line 2: no gold answer"),
        ("set.csv", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("set.csv", b"", "the file is empty"),
        ("set.xlsx", b"PK\x03\x04", "upload a .csv, .jsonl or .json file"),
        ("set.csv", b"question,answer\n", "no questions"),
    ],
)
def test_a_corrupt_file_is_refused_with_a_clear_error_and_nothing_is_stored(team_a, filename, data, message):
    with pytest.raises(ValidationFailed, match=message.replace("(", r"\(").replace("'", "'")):
        eval_set_upload(team=team_a, name="bad", filename=filename, data=data)
    assert not EvalSet.objects.exists()


def test_a_set_name_is_unique_per_team(team_a, team_b):
    data = b'{"question": "Who?", "answers": ["A"]}'
    eval_set_upload(team=team_a, name="mine", filename="a.jsonl", data=data)
    eval_set_upload(team=team_b, name="mine", filename="a.jsonl", data=data)
    with pytest.raises(ValidationFailed, match="already has an evaluation set named 'mine'"):
        eval_set_upload(team=team_a, name="mine", filename="a.jsonl", data=data)


def test_the_shipped_set_reads_and_is_copied_once_per_team(team_a):
    assert set(SHIPPED_SETS) == {"parsimony-docs"}
    items = shipped_items("parsimony-docs")
    assert len(items) == 12 and all(item["answers"] for item in items)
    first = eval_set_from_shipped(team=team_a, shipped="parsimony-docs")
    assert eval_set_from_shipped(team=team_a, shipped="parsimony-docs").pk == first.pk
    assert first.items == items and first.source == "shipped"
    with pytest.raises(ValidationFailed, match="shipped: parsimony-docs"):
        eval_set_from_shipped(team=team_a, shipped="nope")


def test_the_shipped_answers_are_in_the_demo_corpus():
    """The shipped set is about the README the demo corpus ingests: every question has a gold answer in it."""
    from pathlib import Path

    from workers.rag.answer_metrics import contained

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    missing = [item["id"] for item in shipped_items("parsimony-docs") if not contained(readme, item["answers"])]
    assert not missing, missing
