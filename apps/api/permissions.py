"""Who may call what: a team member (session) or an API key with the view's scope."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from apps.accounts.models import ApiKey, Role

# A session user's role implies these API scopes.
ROLE_SCOPES = {
    Role.VIEWER: {"read"},
    Role.MEMBER: {"read", "query", "ingest"},
    Role.ADMIN: {"read", "query", "ingest", "admin"},
    Role.OWNER: {"read", "query", "ingest", "admin"},
}


def request_scopes(request) -> set[str]:
    if isinstance(request.auth, ApiKey):
        scopes = set(request.auth.scopes)
        return {"read", "query", "ingest", "admin"} if "admin" in scopes else scopes
    membership = getattr(request, "membership", None)
    if membership is None:
        return set()
    return ROLE_SCOPES[Role(membership.role)]


class IsTeamMember(BasePermission):
    """Authenticated for a team; writes need the view's ``required_scope`` (default: read for safe methods)."""

    message = "authentication for a team is required"

    def has_permission(self, request, view) -> bool:
        if getattr(request, "team", None) is None:
            return False
        if isinstance(request.auth, ApiKey):
            request.membership = None
        elif not request.user.is_authenticated:
            return False
        needed = getattr(view, "required_scopes", {}).get(request.method)
        if needed is None:
            needed = "read" if request.method in SAFE_METHODS else getattr(view, "required_scope", "admin")
        if needed not in request_scopes(request):
            self.message = f"this operation needs the '{needed}' scope"
            return False
        return True
