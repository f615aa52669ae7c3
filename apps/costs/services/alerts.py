"""Soft-limit alerts: e-mail a team's owners and admins once per period when a budget passes its soft limit.

Settlement finds the windows due an alert (in the statement that books the spend where it can)
and the alert is sent after commit, claimed with a conditional update so it goes out once.

Overage alerts: every ``overage`` ledger row (a remote endpoint billed more than its call's bound,
``apps.costs.billing``) e-mails the same people after commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.costs.models import Budget, BudgetScope, BudgetWindow


def budget_describe(budget: Budget) -> str:
    """How messages (the 402's, the alert e-mail's) name a budget: "the month budget of team 'acme'"."""
    target = {
        BudgetScope.TEAM: f"team '{budget.team.name}'",
        BudgetScope.USER: f"user '{getattr(budget.user, 'username', '?')}'",
        BudgetScope.API_KEY: f"API key '{getattr(budget.api_key, 'name', '?')}'",
    }[BudgetScope(budget.scope)]
    return f"the {budget.period} budget of {target}"


def _admin_emails(team) -> list[str]:
    from apps.accounts.models import Membership, Role

    return list(
        Membership.objects.filter(team=team, role__in=[Role.OWNER, Role.ADMIN])
        .exclude(user__email="")
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def overage_alert_after_commit(record_id: int) -> None:
    transaction.on_commit(lambda: overage_alert_send(record_id=record_id))


def overage_alert_send(*, record_id: int) -> bool:
    """E-mail the team's owners and admins about one overage row; False when nobody could be told."""
    from apps.costs.models import UsageRecord

    record = UsageRecord.objects.select_related("team").filter(pk=record_id).first()
    if record is None:
        return False
    recipients = _admin_emails(record.team)
    if not recipients:
        return False
    send_mail(
        subject=f"[Parsimony] {record.model_name} billed ${record.cost:.6f} over a call's reserved bound",
        message=(
            f"Team '{record.team.name}': the endpoint {record.model_name!r} reported more tokens than the "
            f"call's reservation counted ({record.prompt_tokens} prompt and {record.completion_tokens} "
            f"completion tokens over). The excess is billed in full as an 'overage' ledger row "
            f"(#{record.pk}, ${record.cost:.6f}) and counts against the team's budgets, even past a hard limit. "
            f"A tokenizer set on the endpoint makes its reservations exact."
        ),
        from_email=None,
        recipient_list=recipients,
        fail_silently=True,
    )
    return True


def soft_alerts_after_commit(window_ids: list[int]) -> None:
    if window_ids:
        transaction.on_commit(lambda: budget_soft_alerts_send(window_ids=window_ids))


def windows_due_alert(rows: Iterable[tuple]) -> list[int]:
    """The windows among ``(id, spent, soft_alert_sent_at, hard_limit, soft_limit_percent)`` due a soft alert."""
    due = []
    for window_id, spent, alert_sent_at, hard_limit, percent in rows:
        soft_limit = (Decimal(str(hard_limit)) * int(percent) / 100).quantize(Decimal("0.0000000001"))
        if alert_sent_at is None and Decimal(str(spent)) >= soft_limit:
            due.append(window_id)
    return due


def budget_soft_alerts_send(*, window_ids: list[int] | None = None, reservation_id: int | None = None) -> int:
    """E-mail the team's owners and admins once per period when spend passes a budget's soft limit.

    Checks the given windows (or those of a reservation); one query when no alert is due.
    """
    windows = BudgetWindow.objects.filter(soft_alert_sent_at=None)
    if reservation_id is not None:
        windows = windows.filter(reservations=reservation_id)
    else:
        windows = windows.filter(pk__in=window_ids or [])
    # spent >= hard_limit × percent / 100, compared in SQL so that no row comes back when none is due.
    windows = windows.filter(spent__gte=F("budget__hard_limit") * F("budget__soft_limit_percent") / 100)
    sent = 0
    for window in windows.select_related("budget", "budget__team", "budget__user", "budget__api_key"):
        budget = window.budget
        if window.spent < budget.soft_limit:
            continue
        # Claim the alert with a conditional update so concurrent settlements send it once.
        if not BudgetWindow.objects.filter(pk=window.pk, soft_alert_sent_at=None).update(
            soft_alert_sent_at=timezone.now()
        ):
            continue
        recipients = _admin_emails(budget.team)
        if recipients:
            send_mail(
                subject=f"[Parsimony] {budget.soft_limit_percent}% of {budget_describe(budget)} used",
                message=(
                    f"{budget_describe(budget)} has spent ${window.spent:.4f} of its "
                    f"${budget.hard_limit:.4f} limit this period (soft limit {budget.soft_limit_percent}%). "
                    f"Requests that would go over the limit will be refused with HTTP 402."
                ),
                from_email=None,
                recipient_list=recipients,
                fail_silently=True,
            )
        sent += 1
    return sent
