"""Every page in headless Chromium at 1280 and 390 px: none scrolls sideways, a screenshot of each goes to
test-artifacts/screenshots/pages-w<width>-<page>.png (to be looked at); and a team owner adds a model
endpoint in the browser, tests its connection against a real HTTP server, and never sees the key again.

The objects are made through the services (no ingestion, no generation), so the story is quick; the
ingestion and streaming story is tests/e2e/test_browser.py.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.e2e.test_browser import SCROLLS_SIDEWAYS, _login, _shot, browser, shots_dir  # noqa: F401 (fixtures)
from tests.support.fake_openai import FakeOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "sk-browser-test-0123456789QRST"
LONG_TITLE = "Annual-report_2026_final-final-v3_with-appendices-and-a-very-long-unbroken-file-name.pdf"


@pytest.fixture
def team_objects(team_a, alice, settings, tmp_path, default_models):
    """A corpus with a document, a pipeline, an answered query, a ledger row, a budget, an agent."""
    from apps.agents.services.agents import agent_save
    from apps.corpora.models import Chunk, Document, DocumentStatus
    from apps.corpora.services import corpus_create
    from apps.costs.models import UsageRecord
    from apps.costs.price_table import bundled_prices_load
    from apps.costs.services import budget_save
    from apps.rag.models import QueryRun
    from apps.rag.services import pipeline_save

    # The migrations load the bundled price table; a transactional test before this one flushed it.
    bundled_prices_load()
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()
    corpus = corpus_create(team=team_a, name="Zoo handbook", user=alice)
    document = Document.objects.create(corpus=corpus, title=LONG_TITLE, filename=LONG_TITLE, sha256="0" * 64,
                                       size=2048, status=DocumentStatus.READY)
    Chunk.objects.create(document=document, ordinal=0, text="Zebras have stripes that may deter biting flies. " * 8)
    pipeline = pipeline_save(team=team_a, name="zoo-qa", model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                             description="Answers questions about the zoo handbook, naive RAG with five passages")
    run = QueryRun.objects.create(
        team=team_a, pipeline=pipeline, user=alice, question="What do zebra stripes do?", status="succeeded",
        answer="Their stripes **may deter biting flies** [1].\n\n```\nstripes = deterrent\n```", finish_reason="stop",
    )
    UsageRecord.objects.create(team=team_a, user=alice, stage="generate", model_name="gpt-4o-mini",
                               pipeline_name="zoo-qa", query_run_id=run.pk, prompt_tokens=1234,
                               completion_tokens=321, cost=Decimal("0.0012345"), latency_ms=62931)
    budget = budget_save(team=team_a, hard_limit=Decimal("5"), period="month")
    agent = agent_save(team=team_a, name="zoo-helper", model_endpoint="smollm2-135m-instruct", created_by=alice)
    return {"corpus": corpus, "document": document, "pipeline": pipeline, "run": run, "budget": budget,
            "agent": agent}


def _visit(page, base: str, urls: list[str], folder: Path, width: int) -> list:
    page.set_viewport_size({"width": width, "height": 844 if width < 600 else 900})
    wide = []
    for url in urls:
        response = page.goto(base + url)
        assert response.status == 200, url
        page.wait_for_load_state("networkidle")
        if page.evaluate(SCROLLS_SIDEWAYS):
            sizes = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            wide.append((width, url, page.evaluate(sizes)))
        name = url.strip("/").replace("/", "-").replace("?", "-") or "home"
        # The API docs are one long page: their first screen is what can be looked at.
        _shot(page, folder, f"pages-w{width}-{name}", full_page=not url.startswith("/api/"))
    return wide


def test_every_page_fits_at_1280_and_390_px_and_an_owner_adds_an_endpoint(
    live_server, browser, shots_dir, team_objects, team_a, alice, loopback_endpoints  # noqa: F811
):
    from apps.costs.models import ModelEndpoint

    base = live_server.url
    context, page = _login(browser, base, "alice")

    # --- a model endpoint, added in the browser (the form posts, then redirects), its connection tested
    with FakeOpenAIServer() as server:
        page.goto(f"{base}/team/endpoints/new/")
        page.locator("#id_name").fill("remote-gpt")
        page.locator("#id_base_url").fill(server.base_url)
        page.locator("#id_model").fill("gpt-4o-mini")
        page.get_by_label("API key").fill(SECRET)
        page.get_by_label("Price from the price book").fill("gpt-4o-mi")
        page.wait_for_timeout(600)  # the price book's matches arrive in the datalist (HTMX)
        assert page.locator("#price-options option[value='gpt-4o-mini']").count() == 1
        page.get_by_label("Price from the price book").fill("gpt-4o-mini")
        _shot(page, shots_dir, "pages-endpoint-form-filled")
        page.get_by_role("button", name="Save endpoint").click()
        page.wait_for_url(f"{base}/team/endpoints/")
        assert page.get_by_text("Endpoint remote-gpt saved.").count() == 1
        assert "sk-...QRST" in page.content() and SECRET not in page.content()
        page.get_by_role("button", name="Test the connection of remote-gpt").click()
        page.wait_for_url(f"{base}/team/endpoints/")
        message = page.locator(".message").first.inner_text()
        assert "remote-gpt: connected: gpt-4o-mini answered a 1-token completion" in message, message
        assert server.requests == 1
        _shot(page, shots_dir, "pages-endpoint-tested")
    page.reload()
    assert page.locator(".message").count() == 0 and SECRET not in page.content()
    endpoint = ModelEndpoint.objects.get(team=team_a, name="remote-gpt")
    assert SECRET not in endpoint.api_key_encrypted

    # --- every page at both widths: nothing scrolls sideways; each one photographed
    o = team_objects
    app_pages = [
        "/", "/corpora/", f"/corpora/{o['corpus'].pk}/", f"/documents/{o['document'].pk}/", "/ask/",
        f"/ask/runs/{o['run'].pk}/", "/pipelines/", "/pipelines/new/", f"/pipelines/{o['pipeline'].pk}/edit/",
        "/agents/", "/agents/new/", f"/agents/{o['agent'].pk}/", "/agents/tools/", "/agents/tools/new/",
        "/usage/", "/usage/budgets/new/", f"/usage/budgets/{o['budget'].pk}/edit/", "/team/members/",
        "/team/api-keys/", "/team/endpoints/", "/team/endpoints/new/", f"/team/endpoints/{endpoint.pk}/edit/",
        "/jobs/",
    ]
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username="alice").update(is_staff=True, is_superuser=True)
    admin_pages = ["/admin/", "/admin/costs/usagerecord/", "/admin/costs/budget/", "/admin/costs/price/?q=gpt-4o",
                   "/admin/costs/modelendpoint/"]
    doc_pages = ["/api/docs/", "/api/redoc/"]
    wide = []
    for width in (1280, 390):
        wide += _visit(page, base, app_pages + admin_pages + doc_pages, shots_dir, width)
    assert not wide, f"pages wider than the window (width, url, [scrollWidth, clientWidth]): {wide}"
    context.close()
    # The login page, logged out.
    anonymous = browser.new_context(viewport={"width": 390, "height": 844})
    login = anonymous.new_page()
    login.goto(f"{base}/login/")
    assert not login.evaluate(SCROLLS_SIDEWAYS)
    _shot(login, shots_dir, "pages-w390-login")
    anonymous.close()
