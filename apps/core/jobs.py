"""Job kinds: which Celery task runs each kind, and on which queue. Import-light on purpose.

The web process enqueues by task name (``apps.core.dispatch``), so it never imports the task
modules; the worker registers one task per kind with ``workers.tasks.base.job_task``, which
checks that the kind is in this table with the same queue. Queue names match
``workers.queues.Queue``: ``cpu`` for parsing and bookkeeping, ``gpu`` for model work.
"""

from __future__ import annotations

import threading

TASK_NAME_PREFIX = "parsimony."

# kind -> queue. A kind added here needs a task: workers/tasks/ (see tests/apps/core/test_jobs.py).
JOB_QUEUES: dict[str, str] = {
    "diagnostics.probe_cpu": "cpu",
    "diagnostics.probe_gpu": "gpu",
    "diagnostics.time_limit_gpu": "gpu",  # checks that the gpu pool enforces time limits (operations.md)
    "corpora.ingest": "gpu",
    "corpora.rebuild_index": "gpu",
    "rag.query": "gpu",
    "rag.shadow_baseline": "gpu",  # the naive pipeline beside a sampled query (apps.rag.shadow)
    "embeddings.create": "gpu",
    "agents.run": "gpu",
    "attention.prefill": "gpu",
}
_lock = threading.Lock()


def job_task_name(kind: str) -> str:
    """The Celery task name that runs jobs of ``kind``."""
    return TASK_NAME_PREFIX + kind


def job_kind_queue(kind: str) -> str:
    """The queue of a job kind; an unknown kind raises ValueError listing the known ones."""
    try:
        return JOB_QUEUES[kind]
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r} (known: {', '.join(sorted(JOB_QUEUES))})") from None


def job_kind_register(*, kind: str, queue: str) -> None:
    """Declare the queue of ``kind`` (done by ``job_task``): a kind not in the table is added
    (tests define their own), a kind already there must keep its queue."""
    with _lock:
        known = JOB_QUEUES.setdefault(kind, str(queue))
    if known != str(queue):
        raise ValueError(f"job kind {kind!r} runs on the {known!r} queue (apps/core/jobs.py), not {str(queue)!r}")
