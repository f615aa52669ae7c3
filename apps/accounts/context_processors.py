from apps.accounts.selectors import user_teams


def active_team(request) -> dict:
    user = getattr(request, "user", None)
    return {
        "active_team": getattr(request, "team", None),
        "active_membership": getattr(request, "membership", None),
        "my_teams": user_teams(user=user) if user is not None else [],
    }
