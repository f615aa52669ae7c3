"""200 metered calls racing on shared budgets, local and remote mixed, each costing other than its estimate.

Local calls run a test target whose measured seconds vary (billed per CPU-second, so each costs less
than the wall-time bound it reserved, by a different amount); remote calls go over real HTTP to a fake
OpenAI-compatible endpoint on loopback that streams slowly and, for half of them, reports twice the
prompt tokens it read (more than the bound). A monitor thread on its own connection samples every
budget window's committed state throughout. Nothing may push a window past its hard limit except
recorded overage rows; every call whose reservation succeeded ends as a settled reservation with its
ledger rows; every refused one got BudgetExceeded and left nothing.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.db.models import Sum

from apps.accounts.models import Role
from apps.accounts.services import membership_set
from apps.costs import metering
from apps.costs.models import (
    ZERO,
    Budget,
    BudgetScope,
    BudgetWindow,
    ModelEndpoint,
    Reservation,
    ReservationStatus,
    Stage,
    UsageRecord,
)
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import BudgetExceeded, LedgerContext, budget_save, price_set
from tests.apps.costs.conftest import EARLY
from tests.support.fake_openai import FakeOpenAIServer
from workers.runtime.meter import EchoTarget

REQUESTS = 200
THREADS = 32  # each with its own PostgreSQL connection (the server allows ~100 for everyone)
LOCAL_WALL_S = 2.0  # the local calls' wall-time bound (what they reserve in CPU-seconds); they need <= 0.3 s


def _rows(**filters) -> Decimal:
    return UsageRecord.objects.filter(**filters).aggregate(total=Sum("cost"))["total"] or ZERO


def _rows_of(budget: Budget, **filters) -> Decimal:
    """The ledger rows a budget counts (every window here is the 'total' one: all rows of its scope)."""
    if budget.scope == BudgetScope.USER:
        filters["user"] = budget.user
    return _rows(team=budget.team, **filters)


class Monitor(threading.Thread):
    """Samples every window's committed spent + reserved until stopped (its own DB connection)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples: list[dict[int, Decimal]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                rows = BudgetWindow.objects.values_list("budget_id", "spent", "reserved")
                self.samples.append({budget_id: spent + reserved for budget_id, spent, reserved in rows})
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_racing_calls_never_overspend_beyond_recorded_overage_and_the_ones_that_fit_succeed(
    team_a, alice, make_user, echo_price, settings, monkeypatch
):
    carol = make_user("carol")
    membership_set(team=team_a, user=carol, role=Role.MEMBER)
    settings.PARSIMONY_MODEL_WALL_TIME_S = LOCAL_WALL_S
    # Local: $1 an input token, $2 an output token and $20 a CPU-second, so the seconds matter.
    price_set(
        model_name="test/local",
        input_per_mtok=Decimal(1_000_000),
        output_per_mtok=Decimal(2_000_000),
        per_cpu_second=Decimal(20),
        effective_from=EARLY,
    )
    local = ModelEndpoint.objects.create(
        name="local-echo", kind="local", price_name="test/local", max_output_tokens=8
    )
    rng = random.Random(23)

    def local_target() -> EchoTarget:
        # 2-12 words at 0-25 ms each: the measured seconds (and so the bill) vary per call.
        return EchoTarget(
            reply=" ".join(["w"] * rng.randint(2, 12)), seconds_per_token=rng.uniform(0.0, 0.025)
        )

    real_target = metering.endpoint_target
    monkeypatch.setattr(
        metering,
        "endpoint_target",
        lambda endpoint: local_target() if endpoint.kind == "local" else real_target(endpoint),
    )

    honest_reply, long_reply = "short answer", " ".join(f"word{i}" for i in range(20))
    with (
        FakeOpenAIServer(prompt_token_factor=1.0, chunk_delay_s=0.01, reply=honest_reply) as honest,
        FakeOpenAIServer(
            prompt_token_factor=2.0, chunk_delay_s=0.01, reply=long_reply, tokens_per_chunk=2
        ) as greedy,
    ):
        remotes = [
            ModelEndpoint.objects.create(
                name=name,
                kind="openai",
                base_url=server.base_url,
                remote_model="gpt-4o-mini",
                price_name="test/echo",
                max_output_tokens=8,
            )
            for name, server in (("remote-honest", honest), ("remote-over", greedy))
        ]
        endpoints = [local, *remotes]
        team_budget = budget_save(team=team_a, hard_limit=Decimal(2500), period="total")
        alice_budget = budget_save(
            team=team_a, scope="user", user=alice, hard_limit=Decimal(900), period="total"
        )
        contexts = [LedgerContext(team=team_a, user=alice), LedgerContext(team=team_a, user=carol)]
        plan = [
            (endpoints[i % 3], contexts[i % 2], f"Summarise the context, please: {'fact ' * (i % 7)}")
            for i in range(REQUESTS)
        ]

        def one(i: int) -> tuple[str, int | None]:
            endpoint, context, question = plan[i]
            streamed: list[str] = []
            try:
                call = metering.model_call(
                    endpoint=endpoint,
                    messages=[{"role": "user", "content": question}],
                    context=context,
                    on_token=streamed.append if i % 2 else None,  # half streamed, half not
                    # Local calls stop at (and reserve) LOCAL_WALL_S; remote ones are given time to finish.
                    wall_time_limit_s=None if endpoint.kind == "local" else 30.0,
                )
                return "ok", call.record.reservation_id
            except BudgetExceeded:
                return "refused", None
            except Exception as exc:  # noqa: BLE001 - a fitted call that failed is the bug we look for
                return f"error: {type(exc).__name__}: {exc}", None
            finally:
                connections.close_all()

        monitor = Monitor()
        monitor.start()
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            outcomes = list(pool.map(one, range(REQUESTS)))
        monitor.stop.set()
        monitor.join(timeout=10)
        assert greedy.requests > 0 and honest.requests > 0

    assert monitor.error is None, monitor.error
    assert len(monitor.samples) >= 20, "the monitor must have sampled throughout the race"
    kinds = [kind for kind, _ in outcomes]
    errors = [kind for kind in kinds if kind.startswith("error")]
    assert not errors, errors[:3]
    ok = [reservation_id for kind, reservation_id in outcomes if kind == "ok"]
    assert 20 <= len(ok) <= REQUESTS - 20, (
        f"the budgets should fit some calls and refuse others: {len(ok)} fitted"
    )

    # Every call whose reservation succeeded: settled, to the sum of its ledger rows; refused ones left nothing.
    assert len(set(ok)) == len(ok)
    assert set(Reservation.objects.values_list("pk", flat=True)) == set(ok)
    assert not Reservation.objects.exclude(status=ReservationStatus.SETTLED).exists()
    for reservation in Reservation.objects.all():
        # Its actual is its rows' sum (an overage row under it may be booked with it or beside it).
        billed = _rows(reservation=reservation)
        assert reservation.actual in {billed, billed - _rows(reservation=reservation, stage=Stage.OVERAGE)}
        assert billed > 0, reservation
    assert not UsageRecord.objects.filter(reservation=None).exclude(stage=Stage.OVERAGE).exists()

    # Per window, over time (the monitor) and at the end.
    budgets = {b.pk: b for b in (team_budget, alice_budget)}
    for budget_id, budget in budgets.items():
        overage = _rows_of(budget, stage=Stage.OVERAGE)
        worst = max(sample.get(budget_id, ZERO) for sample in monitor.samples)
        assert worst <= budget.hard_limit + overage, (budget, worst, overage)
        window = BudgetWindow.objects.get(budget=budget)
        assert window.reserved == 0
        assert window.spent == _rows_of(budget)
        assert window.spent <= budget.hard_limit + overage

    # Actual differs from the estimate (the point of this test): less for local calls, and for the
    # over-reporting endpoint more than the bound, which only recorded overage rows may cover.
    settled = list(Reservation.objects.all())
    assert sum(r.actual < r.estimate for r in settled) >= len(settled) // 3
    assert len({r.actual for r in settled}) > 10
    for r in settled:
        if r.actual > r.estimate:
            overage = _rows(reservation=r, stage=Stage.OVERAGE)
            assert overage >= r.actual - r.estimate, (
                f"{r}: actual {r.actual} > estimate {r.estimate}, overage {overage}"
            )
    assert connection.vendor in {"postgresql", "sqlite"}
    # The ledger the race wrote reconciles: rows, windows, reservations (CI's reconciliation step).
    assert [str(difference) for difference in ledger_reconcile()] == []
