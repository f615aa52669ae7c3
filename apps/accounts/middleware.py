"""Sets ``request.team`` and ``request.membership`` from the session's active team."""

from __future__ import annotations

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
