"""The Celery app. Start workers with ``celery -A workers worker -Q gpu`` (or ``-Q cpu``, or ``-Q io --pool threads``).

Settings come from Django's (the CELERY_* names); Celery's Django fix-up calls
django.setup() in the worker, so tasks can use the ORM. The web process sends jobs by task
name through this app (``apps.core.dispatch``, named by settings.PARSIMONY_CELERY_APP); in
the embedded default (no broker) it imports ``TASK_MODULES`` and runs the task in-process.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue as KombuQueue

from workers.queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.config.settings")

TASK_MODULES = [
    "workers.tasks.diagnostics",
    "workers.tasks.ingestion",
    "workers.tasks.rag",
    "workers.tasks.costs",
    "workers.tasks.agents",
    "workers.tasks.attention",
    "workers.tasks.profiles",
    "workers.tasks.jobs",
    "workers.tasks.limits",
    "workers.tasks.evaluations",
    "workers.tasks.bulk",
]

app = Celery("parsimony", include=TASK_MODULES)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(queue.value) for queue in Queue]
app.conf.task_default_queue = Queue.CPU.value
# Each job task declares its queue (apps.core.jobs, workers.tasks.base.job_task); anything else goes to cpu.
app.conf.task_routes = ("workers.tasks.base.route_task",)
app.conf.task_create_missing_queues = False
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True
app.conf.task_track_started = False
app.conf.task_ignore_result = True
# gpu workers run the prefork pool (concurrency 1) so task time limits are enforced: a child past its
# hard limit is killed and replaced. A new child loads and calibrates its models before it reports up
# (workers.tasks.profiles): give it minutes, not Celery's default 4 s.
app.conf.worker_proc_alive_timeout = 600.0

# `celery -A workers beat`: periodic bookkeeping. Without beat (the embedded default),
# budget_reserve still sweeps expired reservations itself, at most every 30 s.
app.conf.beat_schedule = {
    # Recovery after a worker dies (docs/reliability.md). The interval is the setting
    # PARSIMONY_JOB_REAP_EVERY_S, read from the environment here: this module does not load Django.
    "core.reap_jobs": {
        "task": "core.reap_jobs",
        "schedule": float(os.environ.get("PARSIMONY_JOB_REAP_EVERY_S") or 30.0),
        "options": {"queue": Queue.CPU.value, "expires": 25},
    },
    "costs.expire_reservations": {
        "task": "costs.expire_reservations",
        "schedule": 60.0,
        "options": {"queue": Queue.CPU.value, "expires": 55},
    },
    # Worker profiles (the device-time cost model) follow each worker's own ledger rows.
    "costs.refit_worker_profiles": {
        "task": "costs.refit_worker_profiles",
        "schedule": 300.0,
        "options": {"queue": Queue.CPU.value, "expires": 290},
    },
    "costs.reconcile_ledger": {
        "task": "costs.reconcile_ledger",
        "schedule": 24 * 3600.0,
        "options": {"queue": Queue.CPU.value, "expires": 3600},
    },
}
