"""A remote endpoint that reports more than its call's bound is billed in full: the excess is its own overage row.

Real HTTP: a fake OpenAI-compatible endpoint on loopback (tests/support/fake_openai.py) reporting up to
2x the prompt tokens OpenAI would, streaming slowly in several chunks.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core import mail
from django.db.models import Sum

from apps.accounts.models import Role
from apps.accounts.services import membership_set
from apps.costs.metering import model_call
from apps.costs.models import BudgetWindow, ModelEndpoint, ReservationStatus, Stage, UsageRecord
from apps.costs.selectors import budget_status
from apps.costs.services import LedgerContext, budget_save, price_set
from apps.costs.tokens import prompt_tokens_bound
from tests.support.fake_openai import FakeOpenAIServer, cookbook_prompt_tokens

EARLY = datetime(2025, 1, 1, tzinfo=UTC)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France? Answer in a few words, s'il vous plaît."},
]
CAP = 16


@pytest.fixture
def admin_email(team_a, make_user):
    membership_set(team=team_a, user=make_user("ada", email="ada@example.com"), role=Role.ADMIN)
    return "ada@example.com"


@pytest.fixture
def fake_price(db):
    # $1 per input token, $2 per output token: costs read as token counts.
    price, _ = price_set(
        model_name="test/fake-gpt", input_per_mtok=Decimal(1_000_000), output_per_mtok=Decimal(2_000_000),
        effective_from=EARLY,
    )
    return price


def _endpoint(server: FakeOpenAIServer) -> ModelEndpoint:
    return ModelEndpoint.objects.create(
        name="fake-gpt", kind="openai", base_url=server.base_url, remote_model="gpt-4o-mini",
        price_name="test/fake-gpt", max_output_tokens=CAP,
    )


def _rows(reservation_id: int) -> dict[str, UsageRecord]:
    return {row.stage: row for row in UsageRecord.objects.filter(reservation_id=reservation_id)}


def test_a_2x_prompt_report_settles_with_an_overage_row(
    team_a, alice, admin_email, fake_price, django_capture_on_commit_callbacks
):
    budget = budget_save(team=team_a, hard_limit=Decimal(10_000), period="day")
    pieces: list[str] = []
    with FakeOpenAIServer(prompt_token_factor=2.0, chunk_delay_s=0.05, tokens_per_chunk=2) as server:
        endpoint = _endpoint(server)
        bound = prompt_tokens_bound(endpoint, MESSAGES)
        with django_capture_on_commit_callbacks(execute=True):
            call = model_call(
                endpoint=endpoint, messages=MESSAGES, context=LedgerContext(team=team_a, user=alice),
                max_output_tokens=CAP, on_token=pieces.append,
            )
        assert server.requests == 1
        assert server.bodies[0]["max_tokens"] == CAP  # output is bounded by what is sent
    assert len([p for p in pieces if p]) > 1  # it streamed in several chunks
    reported = math.ceil(2.0 * cookbook_prompt_tokens(MESSAGES))
    assert reported > bound  # the endpoint did report more than the reservation counted

    rows = _rows(call.record.reservation_id)
    assert set(rows) == {Stage.GENERATE, Stage.OVERAGE}
    generation, overage = rows[Stage.GENERATE], rows[Stage.OVERAGE]
    assert generation == call.record
    assert generation.prompt_tokens == bound  # up to the bound
    assert generation.completion_tokens <= CAP
    assert overage.prompt_tokens == reported - bound and overage.completion_tokens == 0  # billed in full
    assert overage.price_id == generation.price_id and overage.cost == Decimal(reported - bound)

    reservation = generation.reservation
    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.SETTLED
    assert reservation.actual == generation.cost + overage.cost
    window = BudgetWindow.objects.get(budget=budget)
    assert window.spent == UsageRecord.objects.aggregate(s=Sum("cost"))["s"] == generation.cost + overage.cost
    assert window.reserved == 0
    assert budget_status(budget=budget).overage == overage.cost

    sent = [m for m in mail.outbox if "over a call's reserved bound" in m.subject]
    assert len(sent) == 1 and sent[0].to == [admin_email]
    assert f"#{overage.pk}" in sent[0].body


def test_within_the_bound_there_is_no_overage(
    team_a, alice, admin_email, fake_price, django_capture_on_commit_callbacks
):
    with FakeOpenAIServer(prompt_token_factor=1.0) as server:
        endpoint = _endpoint(server)
        with django_capture_on_commit_callbacks(execute=True):
            call = model_call(endpoint=endpoint, messages=MESSAGES, context=LedgerContext(team=team_a, user=alice),
                              max_output_tokens=CAP)
    assert set(_rows(call.record.reservation_id)) == {Stage.GENERATE}
    assert call.record.prompt_tokens == cookbook_prompt_tokens(MESSAGES) <= prompt_tokens_bound(endpoint, MESSAGES)
    assert not mail.outbox


def test_output_past_max_tokens_is_overage_too_and_may_pass_the_hard_limit(
    team_a, alice, fake_price, django_capture_on_commit_callbacks
):
    with FakeOpenAIServer(extra_completion_tokens=3) as server:
        endpoint = _endpoint(server)
        # The hard limit is exactly the call's reservation: it fits, and only the overage passes it.
        estimate = Decimal(prompt_tokens_bound(endpoint, MESSAGES) + 2 * CAP)
        budget = budget_save(team=team_a, hard_limit=estimate, period="day")
        with django_capture_on_commit_callbacks(execute=True):
            call = model_call(endpoint=endpoint, messages=MESSAGES, context=LedgerContext(team=team_a, user=alice),
                              max_output_tokens=CAP)
    rows = _rows(call.record.reservation_id)
    assert rows[Stage.GENERATE].completion_tokens == CAP
    assert (rows[Stage.OVERAGE].prompt_tokens, rows[Stage.OVERAGE].completion_tokens) == (0, 3)
    status = budget_status(budget=budget)
    assert status.spent > budget.hard_limit
    assert status.spent - status.overage <= budget.hard_limit
    assert status.overage == Decimal(6)


def test_a_query_run_on_the_endpoint_books_its_overage_under_the_runs_reservation(
    team_a, alice, admin_email, fake_price, django_capture_on_commit_callbacks
):
    from apps.rag.models import QueryRun
    from apps.rag.services import query_run_start

    budget = budget_save(team=team_a, hard_limit=Decimal(10_000), period="day")
    with FakeOpenAIServer(prompt_token_factor=2.0, chunk_delay_s=0.02) as server:
        endpoint = _endpoint(server)
        with django_capture_on_commit_callbacks(execute=True):
            run = query_run_start(team=team_a, endpoint=endpoint, messages=MESSAGES, user=alice)
    run = QueryRun.objects.get(pk=run.pk)
    assert run.status == "succeeded", run.error
    rows = list(UsageRecord.objects.filter(query_run_id=run.pk))
    stages = sorted(row.stage for row in rows)
    assert stages == [Stage.GENERATE, Stage.OVERAGE]
    assert all(row.reservation_id == run.reservation_id for row in rows)
    total = sum(row.cost for row in rows)
    assert run.cost == total
    assert BudgetWindow.objects.get(budget=budget).spent == total
    assert len([m for m in mail.outbox if admin_email in m.to]) == 1
