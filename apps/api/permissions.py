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


def view_scopes(view, method: str) -> tuple[str, ...]:
    """The scopes any one of which lets a request call ``method`` on ``view``.

    ``required_scopes`` (per method: one scope or a tuple of alternatives) wins; otherwise safe
    methods need ``read`` and the others ``required_scope`` (default ``admin``). docs/api.md's
    "Scopes per operation" table states the same (tests/apps/api/test_scopes_doc.py reads both)."""
    needed = getattr(view, "required_scopes", {}).get(method)
    if needed is None:
        needed = "read" if method in SAFE_METHODS else getattr(view, "required_scope", "admin")
    return (needed,) if isinstance(needed, str) else tuple(needed)


def only_own_runs(request) -> bool:
    """A key that may poll runs (``query``) but not read the team's (``read``) sees only the runs it started."""
    return isinstance(request.auth, ApiKey) and "read" not in request_scopes(request)


class IsTeamMember(BasePermission):
    """Authenticated for a team, with one of the scopes the view asks for the method (``view_scopes``)."""

    message = "authentication for a team is required"

    def has_permission(self, request, view) -> bool:
        if getattr(request, "team", None) is None:
            return False
        if isinstance(request.auth, ApiKey):
            request.membership = None
        elif not request.user.is_authenticated:
            return False
        needed = view_scopes(view, request.method)
        if not set(needed) & request_scopes(request):
            self.message = f"this operation needs the {' or '.join(repr(scope) for scope in needed)} scope"
            return False
        return True
