"""The one way to read team data.

Every team-owned model declares ``TEAM_FIELD`` (the lookup path from the model to its
Team, e.g. ``"team"`` or ``"document__corpus__team"``). Views and selectors read through
``team_scoped`` / ``team_object_or_404`` so no code path can forget the team filter.
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models
from django.http import Http404

M = TypeVar("M", bound=models.Model)

# The largest primary key (PostgreSQL bigint); a larger number names no row.
MAX_ID = 2**63 - 1


def id_from_ref(ref: object) -> int | None:
    """The row id that ``ref`` (a name or an id, as users type them) spells, else None.

    Only ASCII digits count: ``str.isdigit()`` also accepts "¹" or "٣", which ``int()`` refuses
    or reads as another digit; and a number past the bigint range names no row (the database
    would refuse it)."""
    text = str(ref)
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _team_field(model: type[models.Model]) -> str:
    field = getattr(model, "TEAM_FIELD", None)
    if not field:
        raise TypeError(f"{model.__name__} declares no TEAM_FIELD and cannot be read per team")
    return field


def team_scoped(source: type[M] | models.QuerySet[M], team) -> models.QuerySet[M]:
    """Rows of ``source`` (a model or a queryset) that belong to ``team``; none if team is None."""
    queryset = source if isinstance(source, models.QuerySet) else source._default_manager.all()
    if team is None:
        return queryset.none()
    return queryset.filter(**{_team_field(queryset.model): team})


def team_object_or_404(source: type[M] | models.QuerySet[M], team, **lookup) -> M:
    """One row of the team's, or 404: another team's object looks exactly like a missing one."""
    try:
        return team_scoped(source, team).get(**lookup)
    except (models.ObjectDoesNotExist, ValueError, TypeError) as exc:
        raise Http404("not found") from exc
