"""Sets ``request.team`` and ``request.membership`` from the session's active team; names the audit log's actor."""

from __future__ import annotations

from auditlog.middleware import AuditlogMiddleware

from apps.accounts.models import ApiKey
from apps.accounts.selectors import membership_get, user_teams

SESSION_KEY = "active_team_id"


class ActiveTeamMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.team = None
        request.membership = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            team_id = request.session.get(SESSION_KEY)
            team = user_teams(user=user).filter(pk=team_id).first() if team_id else None
            if team is None:
                # No choice yet (or no longer a member): fall back to the first team.
                team = user_teams(user=user).first()
                if team is not None:
                    request.session[SESSION_KEY] = team.pk
            request.team = team
            request.membership = membership_get(user=user, team=team)
        return self.get_response(request)


class _ActorFromRequest(dict):
    """The audit log's request context, with the actor read when an entry is written, not when the request
    arrived: REST requests authenticate inside the view (DRF sets ``request.user`` to the key's creator)."""

    def __init__(self, request, data: dict) -> None:
        super().__init__(data)
        self._request = request

    def get(self, key, default=None):
        if key == "actor":
            return AuditlogMiddleware._get_actor(self._request)
        return super().get(key, default)


class AuditActorMiddleware(AuditlogMiddleware):
    """django-auditlog's middleware for session (admin, UI) and API-key (REST) requests alike.

    A change made with an API key also records the key (``additional_data``): the actor is its creator.
    """

    def get_extra_data(self, request):
        data = super().get_extra_data(request)

        def api_key() -> dict | None:
            # DRF copies the authentication's ``auth`` (the ApiKey) onto the Django request.
            key = getattr(request, "auth", None)
            return {"api_key_id": key.pk, "api_key": key.name} if isinstance(key, ApiKey) else None

        data["additional_data"] = api_key
        return _ActorFromRequest(request, data)
