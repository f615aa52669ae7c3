from __future__ import annotations

from django.db.models import QuerySet

from apps.core.models import Job
from apps.core.scoping import team_object_or_404, team_scoped


def job_list(*, team, kind: str | None = None, status: str | None = None) -> QuerySet[Job]:
    jobs = team_scoped(Job, team)
    if kind:
        jobs = jobs.filter(kind=kind)
    if status:
        jobs = jobs.filter(status=status)
    return jobs


def job_get(*, team, job_id: int) -> Job:
    return team_object_or_404(Job, team, pk=job_id)


def row_wait_finished(*, row, timeout_s: float, poll_s: float = 0.1):
    """Re-read ``row`` until its ``is_finished`` is true or ``timeout_s`` passes; returns it either way.

    Runs (queries, agent runs) finish in a worker; a synchronous API call waits on the row.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        row.refresh_from_db()
        if row.is_finished or time.monotonic() >= deadline:
            return row
        time.sleep(poll_s)
