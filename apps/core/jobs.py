"""Job kinds: which Celery task runs each kind, and on which queue. Import-light on purpose.

The web process enqueues by task name (``apps.core.dispatch``), so it never imports the task
modules; the worker registers one task per kind with ``workers.tasks.base.job_task``, which
checks that the kind is in this table with the same queue. Queue names match
``workers.queues.Queue``: ``cpu`` for parsing and bookkeeping, ``gpu`` for local model work, ``io``
for model work that waits on a remote endpoint (``model_work_queue``).

A kind listed in ``JOB_QUEUE_CHOICES`` may run on another of its queues: the caller of ``job_start``
picks it, the Job row keeps it (``Job.queue``), and every later send of the job (a redelivery by the
reaper, the next stage of a staged job: ``apps.core.services.job_continue``) goes to the row's queue.
"""

from __future__ import annotations

import contextvars
import enum
import threading
from dataclasses import dataclass, field
from typing import Any

TASK_NAME_PREFIX = "parsimony."

# kind -> queue. A kind added here needs a task: workers/tasks/ (see tests/apps/core/test_jobs.py).
JOB_QUEUES: dict[str, str] = {
    "diagnostics.probe_cpu": "cpu",
    "diagnostics.probe_gpu": "gpu",
    "diagnostics.probe_io": "io",
    "diagnostics.time_limit_gpu": "gpu",  # checks that the gpu pool enforces time limits (operations.md)
    "corpora.ingest": "cpu",  # parse + chunk here; it continues on gpu to embed (JOB_QUEUE_CHOICES)
    "corpora.rebuild_index": "gpu",
    "rag.query": "gpu",
    "rag.shadow_baseline": "gpu",  # the naive pipeline beside a sampled query (apps.rag.shadow)
    "embeddings.create": "gpu",
    "agents.run": "gpu",
    "attention.prefill": "gpu",
    "evaluations.run": "gpu",  # a labelled set through several pipelines (apps.evaluations)
    "bulk.run": "gpu",  # a file of questions against a pipeline (apps.bulk); `io` for a remote endpoint
}
# kind -> every queue a job of the kind may be sent to (its JOB_QUEUES entry first, the default).
# Queries and agent runs whose generator is a remote endpoint run on `io` (``model_work_queue``); an
# ingestion parses on `cpu`, then continues on `gpu` to embed, in groups (``JobContinue``).
JOB_QUEUE_CHOICES: dict[str, tuple[str, ...]] = {
    "rag.query": ("gpu", "io"),
    "agents.run": ("gpu", "io"),
    "corpora.ingest": ("cpu", "gpu"),
    "bulk.run": ("gpu", "io"),
}

# Kinds whose task may simply run again after its worker died (the reaper redelivers them while
# attempts remain): ingestion redoes a document from the start and bills a batch once, with its ready
# mark; a prefill bills once per reservation; a bulk job skips the rows it finished (each batch's rows are
# stored with their costs in one transaction). Other kinds (queries, agents) are failed with a reason:
# running them again would bill their model calls twice.
JOB_REDELIVERABLE: frozenset[str] = frozenset(
    {"corpora.ingest", "attention.prefill", "bulk.run", "diagnostics.probe_cpu",
      "diagnostics.probe_gpu", "diagnostics.probe_io"}
)

# What a job's own records become when it ends without its task finishing them (reaped, cancelled, or
# failed by the task wrapper): dotted paths of ``f(*, job, outcome, reason) -> None`` (``outcome``: a
# ``JobEnd``), called in order, the kind's own first, then those under "*" (its holds). By name,
# as tasks are: apps.core never imports the apps that import it.
JOB_ENDINGS: dict[str, tuple[str, ...]] = {
    "corpora.ingest": ("apps.corpora.services.documents.ingest_job_end",),
    "rag.query": ("apps.rag.services.query_job_end",),
    "agents.run": ("apps.agents.services.runs.agent_job_end",),
    "evaluations.run": ("apps.evaluations.services.eval_job_end",),
    "bulk.run": ("apps.bulk.provider_batch.provider_batch_job_end", "apps.bulk.services.bulk_job_end"),
    "*": ("apps.costs.services.holds.job_holds_end",),
}


@dataclass(frozen=True)
class JobContinue:
    """What a job function returns when its stage is done and the job goes on: the same Job row is
    queued again on ``queue`` (one of its kind's, ``JOB_QUEUE_CHOICES``) with ``params``, and its task
    runs the next stage there (``apps.core.services.job_continue``). A stage that re-enqueues itself on
    its own queue lets the jobs queued behind it run first (per-team fairness between groups).
    ``countdown``: seconds before it is sent (a stage that waits on something outside, such as a provider
    batch polled every minute: apps/bulk/provider_batch.py)."""

    queue: str
    params: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    countdown: float = 0.0


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


def job_kind_queues(kind: str) -> tuple[str, ...]:
    """Every queue a job of ``kind`` may be sent to, its default first."""
    return JOB_QUEUE_CHOICES.get(kind) or (job_kind_queue(kind),)


def job_queue_choose(kind: str, queue: str | None = None) -> str:
    """The queue a new job of ``kind`` goes to: ``queue`` when given (it must be one of the kind's,
    else ValueError naming them), else the kind's default."""
    default = job_kind_queue(kind)
    if queue is None:
        return default
    allowed = job_kind_queues(kind)
    if str(queue) not in allowed:
        raise ValueError(f"job kind {kind!r} runs on {', '.join(allowed)}, not {str(queue)!r}")
    return str(queue)


def model_work_queue(*, remote: bool, local_model_work: bool = False) -> str:
    """The queue of model work: ``io`` when its model calls go to a remote endpoint and nothing in it
    loads a local model (``local_model_work``: a fixed context's KV cache, a local scorer); else ``gpu``.
    A remote call mostly waits on the network: on ``io`` many run at once, and none holds the gpu queue."""
    return "io" if remote and not local_model_work else "gpu"


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
