"""The browser UI end to end in headless Chromium (Debian's, through Playwright) on a live server.

One story, as a team uses it: log in, create a corpus, drop two files, watch the ingestion
progress reach done, search, make a pipeline, ask, watch the answer stream in, follow a
citation, read the cost panel, the usage dashboard and the team pages; a budget refusal; then
a viewer (cannot upload) and a member of another team (sees none of it). Jobs run on the
in-process background threads, as in `make run`, so progress and streaming are real. The
uploads are embedded by the real MiniLM; generation is the engine's EchoTarget, paced per
word so the stream is observable (the real SmolLM2 is covered in tests/e2e/test_openai_client.py).

Screenshots of every page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("PARSIMONY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
PASSWORD = "a-long-test-password"
ANSWER = "Zebras are African equines whose black and white stripes may deter biting flies [1]."
ZEBRA = (
    "Zebras are African equines with distinctive black-and-white striped coats. Their stripes may deter "
    "biting flies, and each zebra's pattern is unique. Zebras live in herds on the savanna and graze on grass."
)
VOLCANO = (
    "A volcano is a rupture in the crust of a planet where lava, volcanic ash and gases escape. Mount Etna "
    "in Sicily is one of the most active volcanoes in the world."
)


@pytest.fixture(scope="module")
def shots_dir():
    from django.conf import settings

    folder = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls in the test are plain sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (the CI script installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # While Playwright's loop runs on this thread, Django keeps the test's database connection in the
        # loop's context, where the test database's teardown cannot see it: close it here, in that context.
        from django.db import connections

        connections.close_all()


@pytest.fixture
def live_app(live_server, settings, tmp_path, monkeypatch, default_models):
    """The live server with jobs on background threads, a private DATA_ROOT, a paced echo model."""
    from apps.corpora import services as corpus_services
    from apps.costs import metering
    from indexes import corpus_store
    from workers.runtime.meter import EchoTarget

    settings.PARSIMONY_INPROCESS_SYNC = False
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()
    corpus_store.cache_clear()
    monkeypatch.setattr(
        metering, "_target_override",
        lambda endpoint: EchoTarget(name=endpoint.name, reply=ANSWER, seconds_per_token=0.25),
    )
    # Pace the (real) ingestion a little, so the page shows it queued and in progress before done.
    real_ingest = corpus_services.documents_ingest

    def paced_ingest(*, documents, progress=None, **kwargs):
        def paced_progress(*args, **kwargs):
            if progress is not None:
                progress(*args, **kwargs)
            time.sleep(0.5)

        time.sleep(1.5)
        return real_ingest(documents=documents, progress=paced_progress, **kwargs)

    monkeypatch.setattr(corpus_services.ingestion, "documents_ingest", paced_ingest)
    yield live_server
    corpus_store.cache_clear()
    # The background job threads keep their database connections: close them on their own threads.
    from django.db import connections

    from apps.core import dispatch

    for executor in list(dispatch._executors.values()):
        executor.submit(connections.close_all).result(timeout=60)


def _login(browser, base_url: str, username: str, viewport=None):
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")
    return context, page


def _wait_until(page, expression: str, *, timeout_ms: int, interval_ms: int = 100) -> None:
    """Poll a JavaScript expression until it is truthy. Not ``page.wait_for_function``: Playwright
    compiles that predicate with eval inside the page, which the app's Content-Security-Policy
    (script-src 'self', no 'unsafe-eval') rightly refuses; ``page.evaluate`` goes through DevTools."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for: {expression}")
        page.wait_for_timeout(interval_ms)


def _shot(page, folder: Path, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


SCROLLS_SIDEWAYS = "document.documentElement.scrollWidth > document.documentElement.clientWidth"


def _assert_no_sideways_scroll(page, base: str, urls: list[str], folder: Path, width: int) -> None:
    """Every page at ``width`` px: the document is no wider than the window (wide tables scroll inside
    their own wrapper). A screenshot of each goes to the artifacts."""
    page.set_viewport_size({"width": width, "height": 844 if width < 600 else 900})
    wide = []
    for url in urls:
        response = page.goto(base + url)
        assert response.status == 200, url
        if page.evaluate(SCROLLS_SIDEWAYS):
            sizes = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            wide.append((url, page.evaluate(sizes)))
        name = url.strip("/").replace("/", "-") or "home"
        _shot(page, folder, f"w{width}-{name}")
    assert not wide, f"pages wider than {width} px (scrollWidth, clientWidth): {wide}"


def test_a_team_uses_parsimony_in_the_browser(live_app, browser, shots_dir, team_a, team_b, alice, bob, tmp_path):
    from apps.corpora.models import Corpus, Document
    from apps.rag.models import QueryRun

    base = live_app.url
    context, page = _login(browser, base, "alice")
    _shot(page, shots_dir, "01-home")

    # --- a corpus, two files dropped on the drop zone, live progress to done
    page.get_by_role("link", name="Corpora", exact=True).click()
    page.get_by_label("Name").fill("Zoo")
    page.get_by_label("Description").fill("Animals and mountains")
    _shot(page, shots_dir, "02-corpora")
    page.get_by_role("button", name="Create corpus").click()
    corpus = Corpus.objects.get(team=team_a, name="Zoo")
    page.wait_for_url(f"{base}/corpora/{corpus.pk}/")
    page.evaluate(
        """([files]) => {
            const dt = new DataTransfer();
            for (const [name, text] of files) dt.items.add(new File([text], name, {type: "text/plain"}));
            const zone = document.querySelector("[data-dropzone]");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [[["zebras.txt", ZEBRA], ["volcanoes.md", "# Volcanoes\n\n" + VOLCANO]]],
    )
    assert page.locator("#id_files").evaluate("input => input.files.length") == 2
    assert page.locator("#dropzone-list li").count() == 2
    _shot(page, shots_dir, "03-corpus-files-dropped")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(f"{base}/corpora/{corpus.pk}/")
    page.get_by_text("2 file(s) uploaded and queued for ingestion").wait_for()
    # Still ingesting when the page loads: the table polls and shows a progress bar per document.
    assert page.locator("#documents[hx-trigger]").count() == 1
    assert page.locator("#documents progress").count() == 2
    _shot(page, shots_dir, "04-corpus-ingesting")
    # The rows update in place (no reload) as the worker reports progress: a row leaves `queued` (it may
    # pass through `processing` between two polls: two small files parse and embed in well under a second).
    page.locator("#documents tr[data-status=processing], #documents tr[data-status=ready]").first.wait_for(
        timeout=120_000)
    page.locator("#documents").scroll_into_view_if_needed()
    _shot(page, shots_dir, "04b-corpus-ingesting-progress", full_page=False)
    _wait_until(page, "document.querySelectorAll('#documents tr[data-status=ready]').length === 2",
                timeout_ms=180_000, interval_ms=250)
    assert page.locator("#documents[hx-trigger]").count() == 0  # polling stopped
    assert page.locator("#documents progress[value='100']").count() == 2
    assert Document.objects.filter(corpus=corpus, status="ready").count() == 2
    _shot(page, shots_dir, "05-corpus-ready")

    # --- search with highlighted hits
    page.get_by_label("Search this corpus").fill("zebra stripes")
    page.get_by_role("button", name="Search").click()
    page.locator("ol.hits mark").first.wait_for()
    assert "stripes" in page.locator("ol.hits mark").all_inner_texts()
    _shot(page, shots_dir, "06-corpus-search")

    # --- a pipeline through the explained form
    page.get_by_role("link", name="Pipelines", exact=True).click()
    page.get_by_role("link", name="New pipeline").click()
    page.get_by_label("Name").fill("zoo-qa")
    page.get_by_label("Zoo").check()
    page.get_by_label("Passages (top k)").fill("2")
    _shot(page, shots_dir, "07-pipeline-form")
    page.get_by_role("button", name="Create pipeline").click()
    page.wait_for_url(f"{base}/pipelines/")
    _shot(page, shots_dir, "08-pipelines")

    # --- ask; the answer streams in
    page.get_by_role("link", name="Ask", exact=True).first.click()
    page.get_by_label("Pipeline").select_option(label="zoo-qa")
    page.get_by_label("Your question").fill("What do zebra stripes do?")
    page.get_by_role("button", name="Ask", exact=True).click()
    page.wait_for_url(re.compile(r".*/ask/runs/\d+/$"))
    run = QueryRun.objects.get(team=team_a)
    _wait_until(
        page,
        "(() => { const live = document.querySelector('#run-live');"
        " const text = document.querySelector('#answer-text').textContent.trim();"
        " return live.dataset.status === 'running' && text.length > 0; })()",
        timeout_ms=120_000,
    )
    partial = page.locator("#answer-text").inner_text()
    _shot(page, shots_dir, "09-ask-streaming")
    page.locator("#run-live[data-status=succeeded]").wait_for(timeout=120_000)
    final = page.locator("#answer-text").inner_text()
    assert 0 < len(partial.strip()) < len(final.strip())  # it grew in place: streamed
    assert "black and white stripes" in final
    assert page.locator("#answer a.cite").count() == 1  # [1] links to its passage
    cost_text = page.locator(".cost-panel dd.cost").inner_text()
    assert cost_text not in ("$0", "—"), cost_text
    run.refresh_from_db()
    assert run.status == "succeeded" and run.cost > 0 and run.citations
    for label in ("Naive RAG would cost", "Saved", "Latency"):
        assert page.get_by_text(label, exact=True).count() == 1
    assert page.locator(".cost-panel tbody tr").filter(has_text="generate").count() == 1
    _shot(page, shots_dir, "10-ask-answer")
    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, shots_dir, "11-ask-answer-mobile")
    page.set_viewport_size({"width": 1280, "height": 900})

    # --- the citation opens the passage in its document
    page.locator("#answer a.cite").click()
    page.wait_for_url(re.compile(r".*/documents/\d+/\?chunk=\d+#chunk-\d+$"))
    cited = page.locator("article.chunk.cited")
    assert cited.count() == 1 and "Zebras" in cited.inner_text()
    _shot(page, shots_dir, "12-document-cited-passage", full_page=False)

    # --- history, usage dashboard (chart drawn from the packaged Chart.js), team pages
    page.goto(f"{base}/ask/")
    assert page.locator("table").filter(has_text="What do zebra stripes do?").count() == 1
    _shot(page, shots_dir, "13-ask-history")
    page.goto(f"{base}/usage/")
    _wait_until(page, "!!(window.Chart && Chart.getChart(document.getElementById('spend-chart')))", timeout_ms=30_000)
    _shot(page, shots_dir, "14-usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export the ledger (CSV)").click()
    assert download.value.suggested_filename.endswith("-ledger.csv")
    page.goto(f"{base}/team/members/")
    page.locator("#id_role").select_option("member")
    page.get_by_role("button", name="Create invitation link").click()
    assert "/invite/" in page.locator("#invite-link").input_value()
    _shot(page, shots_dir, "15-members")
    page.goto(f"{base}/team/api-keys/")
    page.get_by_label("Name").fill("zoo app")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").input_value()
    assert secret.startswith("psk_")
    _shot(page, shots_dir, "16-api-keys-created")
    page.reload()
    assert secret not in page.content()  # shown once

    # --- a budget refusal says which budget and by how much; the soft-limit banner shows
    from apps.costs.services import budget_save, budget_window

    # Spent to the limit: not even the question's first steps fit (a hold covers a request's first
    # steps and grows as the work goes on, so a budget with any room left admits the question).
    budget = budget_save(team=team_a, hard_limit=run.cost * 2, period="day", soft_limit_percent=10)
    window = budget_window(budget=budget)
    window.spent = run.cost * 2
    window.save()
    page.goto(f"{base}/ask/")
    page.get_by_label("Your question").fill("And volcanoes?")
    page.get_by_role("button", name="Ask", exact=True).click()
    refusal = page.get_by_role("alert").filter(has_text="a budget would be exceeded")
    refusal.wait_for()
    text = refusal.inner_text()
    assert "The day budget of team 'Team A' would be exceeded" in text and "Over by" in text
    assert page.get_by_text("Budget warning:").count() == 1
    _shot(page, shots_dir, "17-ask-budget-refused")
    # Room again (60% used, past a 50% soft limit): the budget's bar and warning on the dashboard.
    budget_save(team=team_a, budget=budget, hard_limit=run.cost / Decimal("0.6"), period="day", soft_limit_percent=50)
    page.goto(f"{base}/usage/")
    assert page.locator("#budgets .budget.over-soft").count() == 1
    page.locator("#budgets").scroll_into_view_if_needed()
    _shot(page, shots_dir, "18-usage-budgets", full_page=False)

    # --- no page scrolls sideways on a phone (390 px) or a laptop (1280 px)
    document = Document.objects.filter(corpus=corpus).first()
    main_pages = [
        "/", "/corpora/", f"/corpora/{corpus.pk}/", f"/documents/{document.pk}/", "/ask/", f"/ask/runs/{run.pk}/",
        "/pipelines/", "/pipelines/new/", "/usage/", "/team/members/", "/team/api-keys/", "/jobs/", "/agents/",
        "/agents/tools/", "/agents/new/", "/team/endpoints/", "/team/endpoints/new/",
    ]
    for width in (390, 1280):
        _assert_no_sideways_scroll(page, base, main_pages, shots_dir, width)
    # The admin's ledger and budgets: every column in view at 1280 px, the cost column included.
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username="alice").update(is_staff=True, is_superuser=True)
    for url in ("/admin/costs/usagerecord/", "/admin/costs/budget/"):
        page.goto(base + url)
        table, pane = page.evaluate(
            "(() => { const t = document.querySelector('#result_list');"
            " return [t.getBoundingClientRect().width, t.closest('.results').clientWidth]; })()"
        )
        assert table <= pane + 1, (url, table, pane)
        assert not page.evaluate(SCROLLS_SIDEWAYS), url
        _shot(page, shots_dir, "w1280-admin-" + url.strip("/").split("/")[-1])
    assert "$" in page.locator("#result_list td.field-spent").first.inner_text()
    context.close()

    # --- a viewer reads but cannot upload
    context, page = _login(browser, base, "victor")
    page.goto(f"{base}/corpora/{corpus.pk}/")
    assert page.locator("input[type=file]").count() == 0
    assert page.get_by_role("button", name="Upload").count() == 0
    status = page.evaluate(
        """async (url) => {
            const body = new FormData();
            body.append("files", new File(["sneaky"], "sneaky.txt", {type: "text/plain"}));
            const token = document.querySelector("[name=csrfmiddlewaretoken]").value;
            const response = await fetch(url, {method: "POST", body, headers: {"X-CSRFToken": token}});
            return response.status;
        }""",
        f"{base}/corpora/{corpus.pk}/upload/",
    )
    assert status == 403
    assert Document.objects.filter(corpus=corpus).count() == 2
    _shot(page, shots_dir, "19-viewer-corpus")
    context.close()

    # --- a member of another team sees none of it
    context, page = _login(browser, base, "bob")
    page.goto(f"{base}/corpora/")
    assert page.get_by_text("Zoo").count() == 0
    _shot(page, shots_dir, "20-other-team-corpora")
    for url in (f"/corpora/{corpus.pk}/", f"/ask/runs/{run.pk}/", f"/documents/{document.pk}/"):
        response = page.goto(base + url)
        assert response.status == 404, url
        assert "Zebras" not in page.content()
    _shot(page, shots_dir, "21-other-team-404")
    page.goto(f"{base}/ask/")
    assert page.get_by_text("What do zebra stripes do?").count() == 0
    page.goto(f"{base}/usage/")
    assert page.get_by_text("zoo-qa").count() == 0
    context.close()
