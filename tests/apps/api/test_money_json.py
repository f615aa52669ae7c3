"""Money leaves the service in one format: REST and OpenAI-compatible JSON, headers, 402 details, the CSV
export and the OpenAPI schema (apps.costs.money_format)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.costs.models import UsageRecord
from apps.costs.money_format import MONEY_PATTERN, is_money_str, money_str
from apps.costs.services import budget_save
from apps.rag.models import QueryRun

pytestmark = pytest.mark.django_db


def _client(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def test_rest_json_carries_plain_decimal_strings(team_a, make_api_key, api_client):
    client = _client(api_client, make_api_key(team_a, scopes=["admin"]))
    created = client.post("/api/v1/budgets", {"hard_limit": "0.00001", "period": "month"}, format="json").json()
    # DRF's own DecimalField printed "0E-10" here.
    assert (created["hard_limit"], created["spent"], created["reserved"]) == (
        "0.0000100000", "0.0000000000", "0.0000000000",
    )
    run = QueryRun.objects.create(
        team=team_a, question="q", status="succeeded", cost=Decimal("6.336E-7"), baseline_cost=Decimal("0E-10"),
        savings=Decimal("-6.336E-7"),
    )
    UsageRecord.objects.create(
        team=team_a, query_run_id=run.pk, stage="generate", model_name="m", cost=Decimal("6.336E-7")
    )
    body = client.get(f"/api/v1/queries/{run.pk}").json()
    assert (body["cost"], body["baseline_cost"], body["savings"]) == ("0.0000006336", "0.0000000000", "-0.0000006336")
    assert [row["cost"] for row in body["stages"]] == ["0.0000006336"]
    usage = client.get("/api/v1/usage?group_by=model").json()
    assert usage["total_cost"] == "0.0000006336"
    assert [row["cost"] for row in usage["rows"]] == ["0.0000006336"]


def test_the_402_detail_is_in_the_money_format(team_a, make_api_key, api_client, echo_model, empty_pipeline):
    budget_save(team=team_a, hard_limit=Decimal("1E-7"), period="day")
    response = _client(api_client, make_api_key(team_a)).post(
        "/api/v1/queries", {"pipeline": "plain", "question": "Hi?"}, format="json"
    )
    assert response.status_code == 402
    detail = response.json()["error"]["detail"]
    assert (detail["limit"], detail["spent"], detail["reserved"]) == ("0.0000001000", "0.0000000000", "0.0000000000")
    assert is_money_str(detail["estimate"]) and is_money_str(detail["over_by"])


@pytest.mark.django_db(transaction=True)
def test_openai_compatible_json_and_headers_carry_plain_decimal_strings(team_a, make_api_key, api_client, echo_model):
    client = _client(api_client, make_api_key(team_a))
    response = client.post(
        "/v1/chat/completions",
        {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]},
        format="json",
    )
    assert response.status_code == 200, response.content
    run = QueryRun.objects.get(pk=response["X-Parsimony-Query-Run"])
    assert run.cost > 0
    for header, amount in [
        ("X-Parsimony-Cost", run.cost), ("X-Parsimony-Baseline-Cost", run.baseline_cost),
        ("X-Parsimony-Savings", run.savings),
    ]:
        assert response[header] == money_str(amount) and is_money_str(response[header]), header
    assert response.json()["parsimony"]["cost"] == money_str(run.cost)


def test_the_csv_export_carries_plain_decimal_strings(team_a, alice, client):
    client.force_login(alice)
    UsageRecord.objects.create(
        team=team_a, user=alice, stage="generate", model_name="m", prompt_tokens=1, cost=Decimal("6.336E-7"),
        price_input_per_mtok=Decimal("0.6336"),
    )
    response = client.get("/usage/ledger.csv?days=all")
    header, row = b"".join(response.streaming_content).decode().strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["cost"] == "0.0000006336"
    assert values["price_input_per_mtok"] == "0.6336000000"
    assert values["price_output_per_mtok"] == "0.0000000000"


def test_the_openapi_schema_documents_money_as_a_patterned_string(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    budget = schema["components"]["schemas"]["BudgetOutput"]["properties"]
    for field in ("hard_limit", "spent", "reserved", "remaining"):
        assert budget[field]["type"] == "string", field
        assert budget[field]["pattern"] == MONEY_PATTERN
        assert is_money_str(budget[field]["example"])
