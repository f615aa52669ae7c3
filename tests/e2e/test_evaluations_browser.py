"""Evaluations and Ask › Compare in headless Chromium on a live server: upload a labelled set, run it
through two pipelines, watch the job finish on the result page (chart with its frontier, downloads, the
fit form of a cascade of both), then ask one question of both pipelines side by side. Jobs run on the
in-process background threads, as in `make run`; generation is the engine's paced EchoTarget
(tests/e2e/test_browser.py's live_app)."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.test_browser import _login, _shot, _wait_until, browser, live_app, shots_dir  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SET = "\n".join(json.dumps(item) for item in [
    {"id": "stripes", "question": "What may zebra stripes deter?", "answers": ["biting flies"]},
    {"id": "home", "question": "Where do zebras live?", "answers": ["savanna"]},
])


def test_a_team_evaluates_two_pipelines_and_compares_them(live_app, browser, shots_dir, team_a, alice, tmp_path):  # noqa: F811
    from apps.evaluations.models import EvalRun
    from apps.rag.services import pipeline_save

    for name, cap in (("short", 8), ("long", 64)):
        pipeline_save(team=team_a, name=name, model_endpoint="smollm2-135m-instruct", retriever="none",
                      max_output_tokens=cap)
    pipeline_save(team=team_a, name="cascade-ab", model_endpoint="smollm2-135m-instruct",
                  cascade={"tiers": ["short", "long"]})
    base = live_app.url
    context, page = _login(browser, base, "alice")
    # The first reservation in the live server reads the local model's window and tokenizer (once per
    # process: tens of seconds on a loaded 2-core machine).
    page.set_default_timeout(240_000)
    page.get_by_role("link", name="Evaluations", exact=True).click()
    upload = tmp_path / "zebras.jsonl"
    upload.write_text(SET)
    page.get_by_label("Name").fill("zebras")
    page.locator("input[type=file]").set_input_files(str(upload))
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("Set 'zebras' uploaded: 2 questions.").wait_for()
    page.get_by_label("short").check()
    page.get_by_label("long").check()
    _shot(page, shots_dir, "eval-01-form")
    page.get_by_role("button", name="Run", exact=True).click()
    run = EvalRun.objects.get(team=team_a)
    page.wait_for_url(f"{base}/evaluations/{run.pk}/")
    _wait_until(page, "document.querySelector('#eval-result')?.dataset.status === 'succeeded'",
                timeout_ms=240_000, interval_ms=500)
    _shot(page, shots_dir, "eval-02-result")
    assert page.locator("#eval-chart g.point").count() == 2
    assert page.locator("#eval-chart g.frontier-point").count() >= 1
    assert page.locator("#eval-summary tbody tr").count() == 2
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename == f"evaluation-{run.pk}.csv"
    # Both tiers of the cascade ran: its scorer can be fit here (two questions are too few: said on the form).
    fit = page.locator('article[data-cascade="cascade-ab"]')
    fit.get_by_label("Objective").select_option("accuracy_floor")
    fit.get_by_label("Value").fill("0.5")
    fit.get_by_role("button", name="Fit cascade scorer").click()
    page.locator('article[data-cascade="cascade-ab"]').get_by_text("fitting needs at least 10").wait_for()

    page.get_by_role("link", name="Ask", exact=True).click()
    page.get_by_role("link", name="Compare two pipelines").click()
    page.get_by_label("Pipeline A").select_option(label="short")
    page.get_by_label("Pipeline B").select_option(label="long")
    page.get_by_label("Your question").fill("What may zebra stripes deter?")
    page.get_by_role("button", name="Ask both").click()
    page.wait_for_url(re.compile(r".*/ask/compare/\?a=\d+&b=\d+$"))
    _wait_until(page, "document.querySelectorAll('#run-live[data-status=succeeded]').length === 2",
                timeout_ms=180_000, interval_ms=300)
    assert page.locator(".compare-column .cost-panel").count() == 2
    _shot(page, shots_dir, "eval-03-compare")
    context.close()
