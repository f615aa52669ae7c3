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
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.core.jobs import JobEnd, current_job_id
from apps.core.models import FINISHED_STATUSES
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
    job_id = current_job_id.get()
    if job_id is not None:  # opened by a job's task: its heartbeat extends it, its end settles it
        Reservation.objects.filter(pk=reservation.pk).update(job_id=job_id)
        reservation.job_id = job_id
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


# --------------------------------------------------------------------------- holds under a job
# A job's holds: those its task opened (``Reservation.job``, set by ``hold_open``) and the one it was
# started under (``job.params["reservation_id"]``, linked when a worker claims it).


def _job_holds(job) -> QuerySet[Reservation]:
    linked = Q(job_id=job.pk)
    started_under = (job.params or {}).get("reservation_id")
    if started_under is not None:
        linked |= Q(pk=started_under)
    return Reservation.objects.filter(linked, status=ReservationStatus.HELD)


def job_hold_lease_s() -> int:
    """How far ahead of each heartbeat a running job's holds are kept: past the moment the reaper settles
    them if the worker dies (stale after PARSIMONY_JOB_STALE_AFTER_S, reaped within PARSIMONY_JOB_REAP_EVERY_S),
    so no hold expires under running work and none outlives a dead worker's reaping."""
    return int(2 * settings.PARSIMONY_JOB_STALE_AFTER_S + settings.PARSIMONY_JOB_REAP_EVERY_S)


def job_holds_link(*, job) -> None:
    """Link the hold a job was started under to it (its worker claimed it)."""
    started_under = (job.params or {}).get("reservation_id")
    if started_under is not None:
        Reservation.objects.filter(pk=started_under, job=None).update(job_id=job.pk)


def job_holds_extend(*, job_id: int, beyond_s: float = 0.0) -> int:
    """A heartbeat: keep the job's held holds from expiring for another lease (one UPDATE; a hold whose
    expiry is further away already is left alone, never shortened). ``beyond_s``: that much longer (a job
    that waits queued between stages, such as a provider batch's polls)."""
    until = timezone.now() + timedelta(seconds=job_hold_lease_s() + beyond_s)
    return Reservation.objects.filter(job_id=job_id, status=ReservationStatus.HELD, expires_at__lt=until).update(
        expires_at=until
    )


def _hold_settle(reservation: Reservation) -> None:
    context = LedgerContext(team=reservation.team, user=reservation.user, api_key=reservation.api_key)
    Hold(reservation=reservation, context=context).settle()


def job_holds_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """A job ended without its task settling its holds (``apps.core.services.job_end``): settle each to the
    ledger rows written under it (none: released). Rows already written stay, so nothing is billed twice
    or lost. A redelivered job keeps the hold it was started under (its next attempt resumes it), living
    again as long as it first did. ``work_stopped`` False (a cancelled job whose worker is still
    stopping): left to that worker; ``job_holds_settle_ended`` is the backstop if it dies first."""
    if not work_stopped:
        job_holds_link(job=job)  # so the backstop finds it
        return
    keep = (job.params or {}).get("reservation_id") if outcome == JobEnd.REDELIVERED else None
    for reservation in _job_holds(job).select_related("team", "user", "api_key"):
        if reservation.pk == keep:
            lifetime = max(reservation.expires_at - reservation.created_at, timedelta(seconds=job_hold_lease_s()))
            Reservation.objects.filter(pk=keep).update(expires_at=timezone.now() + lifetime)
            continue
        _hold_settle(reservation)


def job_holds_settle_ended(*, now: datetime | None = None) -> int:
    """The backstop (beat task ``core.reap_jobs``): settle the holds still held by jobs that have ended
    and whose worker has stopped beating (a cancelled job's worker that died before it settled them)."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.PARSIMONY_JOB_STALE_AFTER_S)
    ended = Reservation.objects.filter(
        Q(job__heartbeat_at=None) | Q(job__heartbeat_at__lt=stale_before),
        status=ReservationStatus.HELD,
        job__status__in=FINISHED_STATUSES,
    ).select_related("team", "user", "api_key")
    settled = 0
    for reservation in ended:
        _hold_settle(reservation)
        settled += 1
    return settled


__all__ = [
    "Hold", "hold_cover", "hold_open", "hold_resume", "job_hold_lease_s", "job_holds_end", "job_holds_extend",
    "job_holds_link", "job_holds_settle_ended", "spending",
]
