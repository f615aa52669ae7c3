"""Job kinds: which Celery task runs each kind, and on which queue. Import-light on purpose.

The web process enqueues by task name (``apps.core.dispatch``), so it never imports the task
modules; the worker registers one task per kind with ``workers.tasks.base.job_task``, which
checks that the kind is in this table with the same queue. Queue names match
``workers.queues.Queue``: ``cpu`` for parsing and bookkeeping, ``gpu`` for model work.
"""

from __future__ import annotations

import contextvars
import enum
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
# Kinds whose task may simply run again after its worker died (the reaper redelivers them while
# attempts remain): ingestion redoes a document from the start and bills a batch once, with its ready
# mark; a prefill bills once per reservation. Other kinds (queries, agents) are failed with a reason:
# running them again would bill their model calls twice.
JOB_REDELIVERABLE: frozenset[str] = frozenset(
    {"corpora.ingest", "attention.prefill", "diagnostics.probe_cpu", "diagnostics.probe_gpu"}
)

# What a job's own records become when it ends without its task finishing them (reaped, cancelled, or
# failed by the task wrapper): dotted paths of ``f(*, job, outcome, reason) -> None`` (``outcome``: a
# ``JobEnd``), called in order, the kind's own first, then those under "*" (its holds). By name,
# as tasks are: apps.core never imports the apps that import it.
JOB_ENDINGS: dict[str, tuple[str, ...]] = {
    "corpora.ingest": ("apps.corpora.services.documents.ingest_job_end",),
    "rag.query": ("apps.rag.services.query_job_end",),
    "agents.run": ("apps.agents.services.runs.agent_job_end",),
    "*": ("apps.costs.services.holds.job_holds_end",),
}


class JobEnd(enum.StrEnum):
    """How a job ended without its task finishing it."""

    REDELIVERED = "redelivered"  # its worker died; the job is queued again (records back to pending)
    FAILED = "failed"  # its worker died or its task failed (records failed with the reason)
    CANCELLED = "cancelled"  # a user cancelled it


# The job the current task runs (set by workers.tasks.base.JobTask): holds opened under it are linked to
# it (apps.costs.services.holds.hold_open), so its heartbeat extends them and its end settles them.
current_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("parsimony_current_job_id", default=None)
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


def job_endings(kind: str) -> tuple[str, ...]:
    """The dotted paths of the endings of ``kind`` (``JOB_ENDINGS``): its own, then those of every kind."""
    return JOB_ENDINGS.get(kind, ()) + JOB_ENDINGS["*"]
