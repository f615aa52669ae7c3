from __future__ import annotations

from django.db.models import QuerySet

from apps.accounts.models import ApiKey, Invitation, Membership, Team
from apps.core.scoping import team_scoped


def user_teams(*, user) -> QuerySet[Team]:
    if not getattr(user, "is_authenticated", False):
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user).order_by("name")


def membership_get(*, user, team) -> Membership | None:
    if team is None or not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(user=user, team=team).select_related("team").first()


def team_members(*, team) -> QuerySet[Membership]:
    return team_scoped(Membership, team).select_related("user")


def team_api_keys(*, team) -> QuerySet[ApiKey]:
    return team_scoped(ApiKey, team).select_related("created_by")


def team_invitations(*, team, pending_only: bool = False) -> QuerySet[Invitation]:
    invitations = team_scoped(Invitation, team).select_related("created_by", "accepted_by")
    if pending_only:
        from django.utils import timezone

        invitations = invitations.filter(accepted_at=None, revoked_at=None, expires_at__gt=timezone.now())
    return invitations
