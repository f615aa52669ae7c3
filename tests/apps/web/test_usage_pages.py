"""Usage dashboard: chart data, breakdowns, savings, budgets (admins edit), CSV, banners, isolation."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from apps.costs.models import Budget, UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def spend(team_a, alice, make_api_key, default_models_db):
    key = make_api_key(team_a).api_key
    for user, api_key, model, cost in ((alice, None, "local/smollm2-135m", "0.25"), (None, key, "gpt-4o-mini", "0.50")):
        UsageRecord.objects.create(
            team=team_a, user=user, api_key=api_key, stage="generate", model_name=model, pipeline_name="handbook-qa",
            prompt_tokens=100, completion_tokens=10, cost=Decimal(cost),
        )
    return key


def test_the_dashboard_shows_spend_per_day_and_breakdowns(member_client, spend):
    page = member_client.get("/usage/")
    assert page.status_code == 200
    body = page.content.decode()
    data = json.loads(re.search(r'<script id="spend-data" type="application/json">(.*?)</script>', body).group(1))
    assert len(data["labels"]) == 30 and data["values"][-1] == pytest.approx(0.75)
    assert "/static/admincharts/chart.min.js" in body  # the packaged Chart.js, served locally
    for text in (
        "By model",
        "By user",
        "By API key",
        "By pipeline",
        "gpt-4o-mini",
        "local/smollm2-135m",
        "alice",
        "test key",
    ):
        assert text in body, text
    assert "$0.75" in body
    assert "Savings from compression and caching" in body


def test_the_chart_library_is_served_without_a_cdn(client):
    from django.contrib.staticfiles import finders

    path = finders.find("admincharts/chart.min.js")
    assert path and "Chart.js v3" in open(path, encoding="utf-8").read(200)


def test_the_ledger_exports_as_csv(member_client, spend):
    response = member_client.get("/usage/ledger.csv?days=all")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = b"".join(response.streaming_content).decode().strip().splitlines()
    assert rows[0].startswith("created_at,team,user") and len(rows) == 3


def test_admins_create_and_edit_budgets_members_only_read(member_client, owner_client, team_a, spend):
    assert member_client.get("/usage/budgets/new/").status_code == 403
    response = owner_client.post(
        "/usage/budgets/new/",
        {"scope": "team", "period": "month", "hard_limit": "1.00", "soft_limit_percent": 50, "enabled": "on"},
    )
    assert response.status_code == 302
    budget = Budget.objects.get(team=team_a)
    assert budget.hard_limit == Decimal("1.00") and budget.enabled
    assert (
        member_client.post(
            f"/usage/budgets/{budget.pk}/edit/", {"scope": "team", "period": "day", "hard_limit": "5"}
        ).status_code
        == 403
    )
    owner_client.post(
        f"/usage/budgets/{budget.pk}/edit/",
        {"scope": "api_key", "api_key": spend.pk, "period": "day", "hard_limit": "2", "soft_limit_percent": 80},
    )
    budget.refresh_from_db()
    assert budget.scope == "api_key" and budget.api_key == spend and not budget.enabled
    page = member_client.get("/usage/").content.decode()
    assert (
        'role="progressbar"' in page
        and "Day budget of key test key" in page
        and "Edit" not in page.split("Budgets")[-1].split("</section>")[0]
    )


def test_a_user_budget_needs_its_member(owner_client):
    page = owner_client.post(
        "/usage/budgets/new/",
        {"scope": "user", "period": "month", "hard_limit": "1", "soft_limit_percent": 80},
    )
    assert page.status_code == 400 and b"Choose the member" in page.content


def test_a_budget_over_its_soft_limit_shows_a_banner_on_every_page(member_client, team_a):
    from apps.costs.services import budget_save, budget_window

    budget = budget_save(team=team_a, hard_limit=Decimal("1"), soft_limit_percent=50)
    window = budget_window(budget=budget)
    window.spent = Decimal("0.6")
    window.save()
    for url in ("/", "/corpora/", "/usage/"):
        body = member_client.get(url).content.decode()
        assert "Budget warning" in body and "$0.60" in body, url
    assert "over the soft limit" in member_client.get("/usage/").content.decode()


def test_members_see_their_own_team_only(outsider_client, spend, team_a):
    from apps.costs.services import budget_save

    budget = budget_save(team=team_a, hard_limit=Decimal("1"))
    body = outsider_client.get("/usage/").content.decode()
    assert "gpt-4o-mini" not in body and "$0.75" not in body and "alice" not in body
    rows = b"".join(outsider_client.get("/usage/ledger.csv?days=all").streaming_content).decode().strip().splitlines()
    assert len(rows) == 1
    assert outsider_client.get(f"/usage/budgets/{budget.pk}/edit/").status_code == 404


def test_the_savings_card_shows_claimed_against_measured_baselines(member_client, team_a, pipeline):
    from apps.rag.models import QueryRun

    QueryRun.objects.create(team=team_a, pipeline=pipeline, question="q", status="succeeded",
                            baseline_cost=Decimal("0.0012"), baseline_kind="estimate",
                            measured_baseline_cost=Decimal("0.0010"))
    body = member_client.get("/usage/").content.decode()
    assert "Claimed vs measured baseline" in body
    row = re.search(r"<tr><td>handbook-qa</td>.*?</tr>", body.split("Claimed vs measured baseline")[1]).group(0)
    assert ">1<" in row and "20.0%" in row  # one question, claimed 20% over the measured
