"""Which task runs which job kind. Importing the task modules fills the table."""

from __future__ import annotations

import importlib

from celery import Task

from workers.celery import TASK_MODULES


def task_for_kind(kind: str) -> tuple[Task, str]:
    from workers.tasks.base import JOB_TASKS

    for module in TASK_MODULES:
        importlib.import_module(module)
    try:
        return JOB_TASKS[kind]
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r} (known: {', '.join(sorted(JOB_TASKS))})") from None
