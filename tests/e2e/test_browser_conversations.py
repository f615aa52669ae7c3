"""Conversations in the browser (headless Chromium on a live server): ask, ask a follow-up that carries the
first turn, read the thread and its total cost, rename it, Stop an answer while it streams, Regenerate it,
delete the thread. Jobs run on the in-process background threads, as in `make run`; generation is the
engine's EchoTarget, paced per word so the stream (and Stop) is observable. Screenshots go to
test-artifacts/screenshots/ (conversation-*)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.test_browser import browser  # noqa: F401 (the fixture: headless Chromium)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password"
SHORT = "Zebras graze on grass."
LONG = " ".join(f"word{n}" for n in range(200))


@pytest.fixture
def model(live_server, settings, tmp_path, monkeypatch, default_models):
    """The echo model's reply and pace, changeable during the test."""
    from apps.costs import metering
    from workers.runtime.meter import EchoTarget

    settings.PARSIMONY_INPROCESS_SYNC = False
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()
    state = {"reply": SHORT, "pace": 0.05}
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(
        name=endpoint.name, reply=state["reply"], seconds_per_token=state["pace"]))
    yield state
    from django.db import connections

    from apps.core import dispatch

    for executor in list(dispatch._executors.values()):
        executor.submit(connections.close_all).result(timeout=60)


@pytest.fixture(scope="module")
def shots_dir():
    from django.conf import settings

    folder = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_until(page, expression: str, *, timeout_ms: int, interval_ms: int = 100) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for: {expression}")
        page.wait_for_timeout(interval_ms)


def _finished(page, status: str = "succeeded") -> None:
    page.locator(f"#run-live[data-status={status}]").wait_for(timeout=120_000)


def test_a_conversation_in_the_browser(live_server, model, browser, shots_dir, team_a, alice):  # noqa: F811
    from apps.conversations.models import Conversation
    from apps.costs.reconciliation import ledger_reconcile
    from apps.rag.models import QueryRun
    from apps.rag.services import pipeline_save

    pipeline_save(team=team_a, name="zoo-chat", model_endpoint="smollm2-135m-instruct", retriever="none",
                  max_output_tokens=256)
    base = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    # The first question of a fresh process loads the model's tokenizer and speed profile: minutes on a busy CI.
    page.set_default_navigation_timeout(240_000)
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")

    # --- the first question starts a conversation
    page.goto(f"{base}/ask/")
    page.get_by_label("Pipeline").select_option(label="zoo-chat")
    page.get_by_label("Your question").fill("What do zebras eat?")
    page.get_by_role("button", name="Ask", exact=True).click(timeout=240_000)
    page.wait_for_url(re.compile(r".*/ask/runs/\d+/$"))
    _finished(page)
    conversation = Conversation.objects.get(team=team_a, user=alice)
    assert conversation.title == "What do zebras eat?"

    # --- a follow-up carries the first turn
    page.get_by_label("Your question").fill("And where do they live?")
    page.get_by_role("button", name="Ask a follow-up").click()
    page.wait_for_url(re.compile(r".*/ask/runs/\d+/$"))
    _finished(page)
    follow = QueryRun.objects.get(question="And where do they live?")
    assert follow.conversation == conversation and follow.history["turns"] == 1
    assert "This follow-up carried 1 earlier turn" in page.locator(".history-note").inner_text()
    assert page.locator(".thread .turns li").filter(has_text="What do zebras eat?").count() == 1
    page.screenshot(path=str(shots_dir / "conversation-01-follow-up.png"), full_page=True)

    # --- the thread: both turns, each with its cost, and the total
    page.get_by_role("link", name="What do zebras eat?").first.click()
    page.wait_for_url(f"{base}/ask/conversations/{conversation.pk}/")
    assert page.locator("ol.turns > li.turn").count() == 2
    from apps.web.templatetags.parsimony_web import usd

    turns = QueryRun.objects.filter(conversation=conversation)
    total = sum(t.cost for t in turns)
    assert total > 0 and page.locator(".page-head .thread-total").inner_text() == usd(total)
    page.screenshot(path=str(shots_dir / "conversation-02-thread.png"), full_page=True)

    # --- rename; the Ask page lists it under the new name
    page.get_by_label("Title").fill("Zebra facts")
    page.get_by_role("button", name="Rename").click()
    page.get_by_role("heading", name="Zebra facts", level=1).wait_for()
    page.goto(f"{base}/ask/")
    assert page.locator(".conversation-list").get_by_role("link", name="Zebra facts").count() == 1

    # --- Stop while the answer streams: cancelled, billed for what was generated
    model.update(reply=LONG, pace=0.3)
    page.goto(f"{base}/ask/conversations/{conversation.pk}/")
    page.get_by_label("Your question").fill("Tell me everything.")
    page.get_by_role("button", name="Ask a follow-up").click()
    page.wait_for_url(re.compile(r".*/ask/runs/\d+/$"))
    _wait_until(page, "document.querySelector('#answer-text').textContent.trim().length > 10", timeout_ms=60_000)
    page.screenshot(path=str(shots_dir / "conversation-03-streaming.png"), full_page=True)
    page.get_by_role("button", name="Stop").click()
    _finished(page, "cancelled")
    stopped = QueryRun.objects.get(question="Tell me everything.")
    assert stopped.status == "cancelled" and stopped.finish_reason == "cancelled"
    assert 0 < stopped.completion_tokens < 200
    assert page.get_by_role("status").filter(has_text="Stopped").count() == 1
    page.screenshot(path=str(shots_dir / "conversation-04-stopped.png"), full_page=True)

    # --- Regenerate the stopped turn: a new turn replacing it
    model.update(reply=SHORT, pace=0.05)
    page.get_by_role("button", name="Regenerate").click()
    page.wait_for_url(re.compile(r".*/ask/runs/\d+/$"))
    _finished(page)
    again = QueryRun.objects.get(regenerated_from=stopped)
    assert again.question == stopped.question and again.conversation == conversation
    assert again.history["turns"] == 2  # the two answered turns before it; the stopped one is not carried
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/ask/conversations/{conversation.pk}/")
    assert not page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    page.screenshot(path=str(shots_dir / "conversation-05-thread-mobile.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # --- delete: the thread goes, its questions stay in the team's history and the ledger
    page.get_by_role("button", name="Delete conversation").click()
    page.wait_for_url(f"{base}/ask/")
    assert page.locator(".conversation-list").count() == 0
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert QueryRun.objects.filter(team=team_a).count() == 4
    assert ledger_reconcile() == []
    context.close()
