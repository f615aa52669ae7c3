"""Spending under a hold: reserve a bound before the work, write ledger rows under it, settle to their sum.

Every cost-bearing path (``apps.costs.cost_paths``) uses this one machinery, in one process or
across two (the web process opens the hold, the worker resumes it from the reservation id):

    hold = hold_open(path="ingest", context=context, estimate=bound, description="...")
    ... hold.record(stage=..., model_name=..., usage=..., price=...) ...
    hold.settle()        # the reservation becomes the sum of its rows; no rows: released

``spending(...)`` does the same as a context manager: on an error it settles what was billed
(or releases the hold when nothing was) and re-raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from apps.costs.cost_paths import cost_path
from apps.costs.models import ZERO, Price, Reservation, ReservationStatus, UsageRecord
from apps.costs.pricing import MONEY_QUANTUM, Usage
from apps.costs.services.budgets import (
    RESERVATION_TTL_S,
    budget_reserve,
    reservation_extend,
    reservation_release,
    reservation_settle,
)
from apps.costs.services.ledger import LedgerContext, hold_billed, usage_record


@dataclass
class Hold:
    """A reservation and the ledger rows written under it."""

    reservation: Reservation
    context: LedgerContext
    path: str = ""

    def record(
        self,
        *,
        stage: str,
        model_name: str,
        usage: Usage,
        price: Price | None,
        latency_ms: int = 0,
        finish_reason: str = "",
        endpoint=None,
    ) -> UsageRecord:
        """Write one ledger row under this hold (settlement later books the sum)."""
        return usage_record(
            context=self.context,
            stage=stage,
            model_name=model_name,
            usage=usage,
            price=price,
            latency_ms=latency_ms,
            finish_reason=finish_reason,
            endpoint=endpoint,
            reservation=self.reservation,
        )

    @property
    def estimate(self) -> Decimal:
        return self.reservation.estimate

    def spent(self) -> Decimal:
        """What the rows under this hold cost so far."""
        return hold_billed(self.reservation)

    def remaining(self) -> Decimal:
        """What the hold still covers (never negative)."""
        return max(ZERO, self.reservation.estimate - self.spent())

    def ensure(self, next_bound: Decimal) -> Decimal:
        """Make the hold cover what was spent under it plus ``next_bound`` (the step about to run),
        growing it when it does not (BudgetExceeded, nothing changed, when that would go over a
        budget). Returns by how much it grew. A hold never shrinks while held: its estimate is the
        most it ever blocked."""
        return hold_cover(self.reservation, self.spent() + next_bound)

    def settle(self) -> Reservation:
        """Book the rows' sum and give the rest of the hold back; with no rows, release it. Idempotent."""
        if not UsageRecord.objects.filter(reservation_id=self.reservation.pk).exists():
            return self.release()
        self.reservation = reservation_settle(reservation=self.reservation, actual=self.spent())
        return self.reservation

    def release(self) -> Reservation:
        """Nothing billable ran: give the whole hold back."""
        if self.reservation.status == ReservationStatus.HELD:
            self.reservation = reservation_release(reservation=self.reservation)
        return self.reservation


def hold_cover(reservation: Reservation, needed: Decimal) -> Decimal:
    """Grow a held ``reservation`` to ``needed`` if it holds less (BudgetExceeded, nothing changed, when
    a budget refuses); returns by how much it grew. The growth is rounded up to the stored 10 places,
    so the stored hold is never short of ``needed``."""
    grow = (needed - reservation.estimate).quantize(MONEY_QUANTUM, rounding=ROUND_CEILING)
    if grow <= 0:
        return ZERO
    reservation_extend(reservation=reservation, amount=grow)
    return grow


def hold_open(
    *,
    path: str,
    context: LedgerContext,
    estimate: Decimal,
    description: str = "",
    ttl_s: int = RESERVATION_TTL_S,
) -> Hold:
    """Reserve ``estimate`` for a listed cost path against every applicable budget (402 if one would go over)."""
    cost_path(path)  # an unlisted path is a programming error, not a silent free ride
    reservation = budget_reserve(
        team=context.team,
        user=context.user,
        api_key=context.api_key,
        estimate=estimate,
        # The path leads the description, so the ledger can always tell which path a hold served.
        description=(
            description if description.startswith(f"{path}:") else f"{path}: {description}" if description else path
        )[:255],
        ttl_s=ttl_s,
    )
    return Hold(reservation=reservation, context=context, path=path)


def hold_resume(*, reservation: Reservation | int, context: LedgerContext, path: str = "") -> Hold:
    """The hold opened elsewhere (the web process), by its reservation (or its id), in the worker."""
    if not isinstance(reservation, Reservation):
        reservation = Reservation.objects.get(pk=reservation)
    return Hold(reservation=reservation, context=context, path=path)


@contextmanager
def spending(
    *,
    path: str,
    context: LedgerContext,
    estimate: Decimal,
    description: str = "",
    ttl_s: int = RESERVATION_TTL_S,
) -> Iterator[Hold]:
    """``hold_open``, the work, then settle; on an error settle what was billed (or release) and re-raise."""
    hold = hold_open(path=path, context=context, estimate=estimate, description=description, ttl_s=ttl_s)
    try:
        yield hold
    except BaseException:
        hold.settle()
        raise
    hold.settle()


__all__ = ["Hold", "hold_cover", "hold_open", "hold_resume", "spending"]
