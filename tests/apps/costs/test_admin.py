"""The admin panel for costs renders for a superuser: budgets with progress, chart, prices, ledger, CSV."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest

from apps.costs.metering import model_call
from apps.costs.models import Price, UsageRecord
from apps.costs.money_format import usd
from apps.costs.services import budget_reserve, budget_save, reservation_settle
from workers.runtime.meter import EchoTarget

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client, make_user):
    client.force_login(make_user("root", is_superuser=True))
    return client


@pytest.fixture
def ledger(echo_endpoint, echo, ctx):
    echo.target = EchoTarget(reply="a b c")
    for stage in ["generate", "compress", "generate"]:
        model_call(endpoint=echo_endpoint, messages=[{"role": "user", "content": "hi there"}], context=ctx, stage=stage)
    return UsageRecord.objects.all()


def test_the_budget_list_shows_spend_and_a_progress_bar(superuser_client, team_a):
    budget = budget_save(team=team_a, hard_limit=Decimal(10), period="month")
    reservation_settle(reservation=budget_reserve(team=team_a, estimate=Decimal(6)), actual=Decimal("2.5"))
    budget_reserve(team=team_a, estimate=Decimal("1.5"))
    page = superuser_client.get("/admin/costs/budget/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'role="progressbar"' in html and 'aria-valuenow="40"' in html
    assert "<td class=\"field-spent\">$2.50</td>" in html and "<td class=\"field-reserved\">$1.50</td>" in html
    assert "$10.00 (warn 80%)" in html and "Team A · team · month" in html
    assert "0000000" not in html  # no money shown with the ledger's 10 places
    assert str(budget) == "Team A: team budget, $10.00 a month"


def test_the_budget_page_shows_this_periods_status_and_a_spend_per_day_chart(superuser_client, team_a, ledger):
    budget = budget_save(team=team_a, hard_limit=Decimal(100), period="month")
    page = superuser_client.get(f"/admin/costs/budget/{budget.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="spend-per-day"' in html
    assert html.count("data-day=") == 30
    total = sum(record.cost for record in ledger)
    costs = [Decimal(value) for value in re.findall(r'data-cost="([^"]*)"', html)]
    assert costs[-1] == total and sum(costs[:-1]) == 0  # today's bar holds all of it
    assert 'role="progressbar"' in html


def test_the_budget_add_page_renders(superuser_client):
    assert superuser_client.get("/admin/costs/budget/add/").status_code == 200


def test_the_price_book_shows_history(superuser_client, echo_price):
    from datetime import UTC, datetime

    from apps.costs.services import price_set

    price_set(model_name="test/echo", input_per_mtok=Decimal(5), output_per_mtok=Decimal(6),
              effective_from=datetime(2026, 5, 1, tzinfo=UTC))
    page = superuser_client.get("/admin/costs/price/?q=test/echo")
    assert page.status_code == 200
    assert page.content.decode().count("test/echo") >= 2
    assert superuser_client.get(f"/admin/costs/price/{echo_price.pk}/change/").status_code == 200


def test_a_charged_price_is_read_only(superuser_client, ledger, echo_price):
    page = superuser_client.get(f"/admin/costs/price/{echo_price.pk}/change/")
    assert page.status_code == 200
    assert 'name="input_per_mtok"' not in page.content.decode()
    Price.objects.get(pk=echo_price.pk)


def test_the_endpoint_pages_render(superuser_client, echo_endpoint):
    assert superuser_client.get("/admin/costs/modelendpoint/").status_code == 200
    assert superuser_client.get(f"/admin/costs/modelendpoint/{echo_endpoint.pk}/change/").status_code == 200


def test_an_endpoint_base_url_typed_without_a_scheme_is_an_https_one(rf, admin_user):
    from django.contrib import admin

    from apps.costs.models import ModelEndpoint

    request = rf.get("/admin/costs/modelendpoint/add/")
    request.user = admin_user
    form = admin.site._registry[ModelEndpoint].get_form(request)
    assert form.base_fields["base_url"].clean("api.example.com/v1") == "https://api.example.com/v1"


def test_the_ledger_is_read_only_and_filterable(superuser_client, ledger, team_a):
    page = superuser_client.get("/admin/costs/usagerecord/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Add usage record" not in html
    for facet in ["By stage", "By model name", "By user", "By created at"]:
        assert facet.lower() in html.lower(), facet
    # Team and key facets show once there is more than one to choose from; the filters work regardless.
    filtered = superuser_client.get(f"/admin/costs/usagerecord/?stage=compress&team__id__exact={team_a.pk}")
    assert filtered.status_code == 200
    assert "1 usage record" in filtered.content.decode()
    detail = superuser_client.get(f"/admin/costs/usagerecord/{ledger[0].pk}/change/")
    assert detail.status_code == 200
    assert 'name="cost"' not in detail.content.decode()
    assert superuser_client.post(f"/admin/costs/usagerecord/{ledger[0].pk}/delete/").status_code == 403


def test_the_ledger_exports_csv_with_the_current_filters(superuser_client, ledger):
    response = superuser_client.get("/admin/costs/usagerecord/?export=csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["created_at", "team", "user"]
    assert len(rows) == 1 + 3
    header = rows[0]
    assert {row[header.index("stage")] for row in rows[1:]} == {"generate", "compress"}
    assert sum(Decimal(row[header.index("cost")]) for row in rows[1:]) == sum(r.cost for r in ledger)
    only = superuser_client.get("/admin/costs/usagerecord/?export=csv&stage=compress")
    assert len(list(csv.reader(io.StringIO(b"".join(only.streaming_content).decode())))) == 2


def test_the_reservations_page_renders(superuser_client, team_a):
    budget_reserve(team=team_a, estimate=Decimal(1))
    assert superuser_client.get("/admin/costs/reservation/").status_code == 200


def test_the_ledger_list_shows_few_compact_columns(superuser_client, ledger):
    html = superuser_client.get("/admin/costs/usagerecord/").content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*?(column-[a-z_]+)', html)
    assert headers == [
        "column-when", "column-cost_usd", "column-team", "column-who", "column-stage",
        "column-model_name", "column-tokens", "column-gpu_s",
    ]
    record = ledger[0]
    assert f'<td class="field-cost_usd">{usd(record.cost)}</td>' in html
    assert f"{record.prompt_tokens:,} → {record.completion_tokens:,}" in html
    assert "0000000" not in html
    assert 'id="nav-sidebar"' not in html  # the app sidebar is off: the columns get its 275 px


def test_the_money_labels_read_as_sentences(team_a, alice):
    from apps.costs.models import Budget, BudgetWindow, Reservation

    budget = budget_save(team=team_a, hard_limit=Decimal("1"), period="day")
    assert str(budget) == "Team A: team budget, $1.00 a day"
    per_user = Budget(team=team_a, scope="user", user=alice, period="total", hard_limit=Decimal("0.0123456789"))
    assert str(per_user) == "Team A: alice's budget, $0.0123 in total"
    reservation = budget_reserve(team=team_a, estimate=Decimal("0.5"))
    assert str(Reservation.objects.get(pk=reservation.pk)) == f"reservation #{reservation.pk} of $0.5000 (held)"
    window = BudgetWindow.objects.get(budget=budget)
    assert str(window).endswith("spent $0, reserved $0.5000")
