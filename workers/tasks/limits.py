"""A job whose task passed its hard time limit fails with that reason.

With the prefork pool, Celery kills the child process running a task past its hard ``time_limit`` (a
model forward deaf to the soft limit's signal ends there) and reports it in the parent process with a
``task_failure`` signal carrying ``TimeLimitExceeded``; the job's own code never runs again, so this
handler marks the job failed, naming the limit. Celery 5.7 may send that signal twice for one timeout
(the pool's failure callback, then its timeout handler, which logs "Hard time limit"): failing a job that
has already failed changes nothing and is not logged again (``job_fail`` returns False). The soft limit
is handled in the task itself (``workers.tasks.base``). The solo pool enforces neither limit: the gpu
worker runs prefork (docs/operations.md).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure
from django.db import close_old_connections

from apps.core import services as job_services
from workers.tasks.base import JobTask

logger = logging.getLogger(__name__)


@task_failure.connect
def _job_failed_at_hard_limit(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    args: Any = None, kwargs: Any = None, **extra: Any,
) -> None:
    if not isinstance(exception, TimeLimitExceeded) or not isinstance(sender, JobTask):
        return
    job_id = (args[0] if args else None) or (kwargs or {}).get("job_id")
    if job_id is None:
        return
    limit = exception.args[0] if exception.args else sender.time_limit
    close_old_connections()  # the parent process may hold a connection the database dropped
    failed = job_services.job_fail(
        job_id=int(job_id),
        error=f"hard time limit exceeded ({limit} s): the worker process running it was killed",
    )
    if failed:  # once per job, though the signal may come twice
        logger.warning("job %s: hard time limit (%s s) exceeded, task %s killed", job_id, limit, task_id)
