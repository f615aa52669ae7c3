"""Who may do what in the browser UI: the active team from the session, a minimum role."""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect

from apps.accounts.models import Role

ROLE_NAMES = {Role.VIEWER: "viewers", Role.MEMBER: "members", Role.ADMIN: "admins", Role.OWNER: "owners"}


def team_view(minimum: str = Role.VIEWER):
    """Login required, an active team required, and at least ``minimum`` role in it (else 403).

    Objects are read with ``team_object_or_404(..., request.team, ...)`` inside the view, so
    another team's object answers 404, exactly like a missing one.
    """

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.team is None or request.membership is None:
                messages.info(request, "You are not a member of any team yet: ask a team owner for an invitation link.")
                return redirect("home")
            if not request.membership.has_role(minimum):
                raise PermissionDenied(f"only the team's {ROLE_NAMES[Role(minimum)]} and above can do this")
            return view(request, *args, **kwargs)

        wrapper.minimum_role = minimum
        return wrapper

    return decorate


def can(request, minimum: str) -> bool:
    return request.membership is not None and request.membership.has_role(minimum)
