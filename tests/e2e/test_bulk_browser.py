"""The Bulk page end to end in headless Chromium on a live server: upload a CSV of questions at k = 2,
watch the job finish on its page, read the answers and download the result file."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from tests.apps.rag.conftest import fake_search_hits
from tests.e2e.test_browser import _login, _shot, browser, live_app, shots_dir  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CSV = "id,question\nq1,When was the Eiffel Tower completed?\nq2,What is the capital of France?\nq3,Where is it?\n"
PASSAGES = [("Eiffel Tower", "The Eiffel Tower in Paris was completed in 1889."),
            ("Paris", "Paris is the capital of France.")]


def test_a_member_runs_a_file_of_questions_from_the_bulk_page(live_app, browser, shots_dir, team_a, alice,  # noqa: F811
                                                             monkeypatch, tmp_path):
    from apps.corpora.services import corpus_create
    from apps.costs import metering
    from apps.rag.services import pipeline_save
    from workers.runtime.meter import EchoTarget

    fake_search_hits(monkeypatch, PASSAGES)
    monkeypatch.setattr(metering, "_target_override",
                        lambda endpoint: EchoTarget(name=endpoint.name, reply="A1: 1889 [1]\nA2: Paris [2]"))
    corpus = corpus_create(team=team_a, name="facts")
    pipeline_save(team=team_a, name="facts", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                  max_output_tokens=12, top_k=2)
    questions = tmp_path / "questions.csv"
    questions.write_text(CSV)

    base = live_app.url
    context, page = _login(browser, base, alice.username)
    page.set_default_timeout(120_000)  # the upload tokenizes its questions for the hold (cold tokenizers)
    page.get_by_role("link", name="Bulk").click()
    page.wait_for_url(f"{base}/bulk/")
    page.get_by_label("Pipeline").select_option(label="facts")
    page.get_by_label("Questions per prompt (k)").fill("2")
    page.locator("#id_file").set_input_files(str(questions))
    _shot(page, shots_dir, "bulk-upload")
    page.get_by_role("button", name="Start the job").click()
    page.wait_for_url(f"{base}/bulk/*/")
    detail = page.url
    deadline = time.monotonic() + 240
    while page.locator("#bulk-status").inner_text().strip() != "succeeded":  # the page refreshes itself too
        assert time.monotonic() < deadline, "the bulk job did not finish in 240 s"
        page.wait_for_timeout(1000)
        page.goto(detail)
    assert page.locator("#bulk-progress").inner_text().startswith("3 of 3")
    rows = page.locator("#bulk-rows tbody tr")
    assert rows.count() == 3 and "1889 [1]" in rows.nth(0).inner_text() and "Paris [2]" in rows.nth(1).inner_text()
    _shot(page, shots_dir, "bulk-done")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download results (CSV)").click()
    saved = Path(download.value.path())
    records = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [r["id"] for r in records] == ["q1", "q2", "q3"] and records[0]["answer"] == "1889 [1]"
    context.close()
