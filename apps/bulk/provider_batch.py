"""Bulk jobs run through a provider's Batch API (``mode="provider_batch"``): answered within 24 h at the
provider's batch prices, billed here row by row at those prices (docs/bulk.md, "Provider batches").

The job's ``bulk.run`` task runs in stages (``apps.core.jobs.JobContinue``), each one idempotent:

1. prepare: each pending row gets its QueryRun, its retrieval (billed, as a query's) and its naive prompt,
   stored on the row in one transaction (``BulkRow.prepared``);
2. submit: one JSONL file of chat requests (custom_id = the row's id) is uploaded and its id stored, then one
   batch is made on it and its id stored. A resumed submit looks for a batch already made on the stored file
   before it makes one, so a worker that dies anywhere in between never submits twice;
3. poll: the batch is read back; while the provider works, the job goes back to its queue for
   PARSIMONY_PROVIDER_BATCH_POLL_S (its holds kept alive that long) and polls again;
4. settle: once the batch is finished, each row, in its own transaction and only while still pending: its
   generation row from the provider's usage at the batch price, its quality check, its run closed with the
   naive-RAG baseline at the normal price (so the batch discount is part of its savings, as every other
   saving), or failed with the provider's message. The hold shrinks as rows settle and is settled at the end.

Cancelling the job (or its failing for good) cancels the provider batch. The provider still answers the
requests it had finished before the cancel took effect, and charges for them: ``provider_batch_after_end``
(task ``bulk.provider_batch_after_end``, sent by the job's ending) polls the batch until it has ended, then
settles those rows as above and books their cost to the budgets after the hold was settled
(``reservation_true_up``); the rows the provider never answered fail as cancelled.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.bulk.models import BulkJob, BulkMode, BulkRow, BulkStatus, RowStatus
from apps.bulk.provider_batch_rules import MODES, batch_price, batch_price_problem
from apps.core.jobs import JobEnd
from apps.costs.models import ZERO, ModelEndpoint, Price, Stage, UsageRecord
from apps.costs.pricing import Usage, cost_of
from apps.costs.services import price_current, usage_record
from apps.costs.services.budgets import reservation_shrink, reservation_true_up
from apps.costs.services.ledger import hold_billed

logger = logging.getLogger(__name__)

# The task that settles what a cancelled job's provider batch answered anyway (workers/tasks/bulk.py).
AFTER_END_TASK = "bulk.provider_batch_after_end"
NOT_ANSWERED = "cancelled before the provider answered it"

class ProviderBatchError(Exception):
    """A row the provider answered with an error (its message), or did not answer."""


@dataclass(frozen=True)
class ProviderWait:
    """The provider is still working: poll again in ``countdown`` seconds."""

    status: str
    message: str
    countdown: float


# --------------------------------------------------------------------------- the provider


def endpoint_config(endpoint: ModelEndpoint) -> Any:
    from apps.costs.metering import endpoint_api_key, endpoint_network_policy
    from workers.runtime.openai_compat import OpenAICompatConfig

    return OpenAICompatConfig(base_url=endpoint.base_url, model=endpoint.remote_model or endpoint.name,
                              api_key=endpoint_api_key(endpoint), name=endpoint.name,
                              network_policy=endpoint_network_policy(endpoint))


def poll_interval_s() -> float:
    return float(settings.PARSIMONY_PROVIDER_BATCH_POLL_S)


# --------------------------------------------------------------------------- the job's stages


def provider_batch_run(*, bulk_job_id: int, progress=None) -> BulkJob | ProviderWait | None:
    """One stage of a provider-batch bulk job (in a worker): prepare and submit if not yet done, poll, and
    settle once the provider has finished. Idempotent: a redelivered or repeated stage redoes nothing that
    was stored (no second submission, no row billed twice)."""
    from apps.bulk.services import bulk_job_finish, bulk_job_for_work
    from workers.runtime import openai_batch
    from workers.runtime.openai_compat import EndpointError

    progress = progress or (lambda *args, **kwargs: None)
    bulk = bulk_job_for_work(bulk_job_id)
    if bulk is None or bulk.is_finished:
        return bulk
    if bulk.pipeline is None:
        return bulk_job_finish(bulk=bulk, status=BulkStatus.FAILED, error="the job's pipeline was deleted")
    BulkJob.objects.filter(pk=bulk.pk).update(status=BulkStatus.RUNNING)
    endpoint = bulk.pipeline.model_endpoint
    config = endpoint_config(endpoint)
    if not bulk.provider_batch_id:
        _prepare(bulk, progress)
        if not bulk.rows.filter(status=RowStatus.PENDING).exists():  # every row failed before it could be sent
            return bulk_job_finish(bulk=bulk, status=BulkStatus.FAILED, error="no row could be prepared")
        _submit(bulk, config)
    try:
        state = openai_batch.batch_get(config, batch_id=bulk.provider_batch_id)
    except EndpointError as exc:
        if not exc.retryable:
            raise  # a refused key, a batch the provider does not know: the job fails (and cancels the batch)
        # The provider is unreachable for now: the batch runs on there, poll again later.
        return _wait(bulk, bulk.provider_status, f"provider batch unreachable ({exc}); polling again")
    BulkJob.objects.filter(pk=bulk.pk).update(provider_status=state.status, provider_polled_at=timezone.now())
    message = f"provider batch {state.status}: {state.completed + state.failed} of {state.total or bulk.rows_total}"
    progress(state.completed + state.failed, bulk.rows_total, message)  # JobCancelled when cancelled meanwhile
    if not state.finished:
        return _wait(bulk, state.status, message)
    try:
        _settle(bulk, config, state, progress)
    except EndpointError as exc:  # the result files could not be read: the rows settled so far stay settled
        if not exc.retryable:
            raise
        return _wait(bulk, state.status, f"provider batch {state.status}; its results could not be read ({exc})")
    failed = state.status != "completed" and not bulk.rows.filter(status=RowStatus.DONE).exists()
    return bulk_job_finish(bulk=bulk, status=BulkStatus.FAILED if failed else BulkStatus.SUCCEEDED,
                           error="" if state.status == "completed" else _batch_ended(state))


def _wait(bulk: BulkJob, status: str, message: str) -> ProviderWait:
    """Poll again in PARSIMONY_PROVIDER_BATCH_POLL_S: the job's holds stay held until then."""
    from apps.costs.services.holds import job_holds_extend

    countdown = poll_interval_s()
    if bulk.job_id:
        job_holds_extend(job_id=bulk.job_id, beyond_s=countdown)
    return ProviderWait(status=status or "unknown", message=message, countdown=countdown)


def _batch_ended(state) -> str:
    why = f": {'; '.join(state.errors)}" if state.errors else ""
    return f"the provider batch ended {state.status}{why}"


def _prepare(bulk: BulkJob, progress) -> None:
    """Each pending row not prepared yet: its run, its retrieval (billed) and its naive prompt, stored in one
    transaction (a worker that dies mid-row leaves nothing of it)."""
    from apps.bulk.services import _row_failed, _rows_store, _run_open
    from apps.rag.question_runner import engine_config
    from workers.prompting.base import Passage
    from workers.prompting.naive import NaivePrompting
    from workers.rag.pipeline import fit_passages

    pipeline = bulk.pipeline
    rows = list(bulk.rows.filter(status=RowStatus.PENDING, prepared={}).order_by("position"))
    for n, row in enumerate(rows, start=1):
        with transaction.atomic():
            run, hooks = _run_open(bulk, row)
            config = engine_config(run=run, endpoint=hooks.endpoint)
            try:
                chunks = hooks.retrieve(row.question, config.top_k)
            except Exception as exc:  # one bad row does not stop the job
                logger.exception("bulk job %s row %s: retrieval failed", bulk.pk, row.position)
                _rows_store(bulk, [_row_failed(row, run, exc)])
                continue

            def build(kept: list, question: str = row.question) -> list[dict]:
                return NaivePrompting().build_messages(system_prompt=pipeline.system_prompt, question=question,
                                                       passages=kept)

            def count(kept: list, hooks: Any = hooks) -> int:
                return hooks.count_tokens(build(kept))

            passages = [Passage(chunk_id=c.chunk_id, title=c.title, text=c.text) for c in chunks]
            kept = fit_passages(passages, count, config.max_prompt_tokens)
            BulkRow.objects.filter(pk=row.pk).update(prepared={
                "run_id": run.pk, "chunks": [asdict(chunk) for chunk in chunks[:len(kept)]],
                "messages": build(kept), "max_tokens": config.max_output_tokens,
            })
        progress(0, bulk.rows_total, f"prepared {n} of {len(rows)} prompts")


def _submit(bulk: BulkJob, config) -> None:
    """Upload the prepared rows as one file (its id stored), then make one batch on it (its id stored)."""
    from workers.runtime import openai_batch

    pipeline = bulk.pipeline
    if not bulk.provider_input_file_id:
        requests = [
            openai_batch.BatchRequest(custom_id=str(row.pk), messages=row.prepared["messages"],
                                      max_tokens=row.prepared["max_tokens"],
                                      stop=(pipeline.decoding_options or {}).get("stop") or None)
            for row in bulk.rows.filter(status=RowStatus.PENDING).exclude(prepared={}).order_by("position")
        ]
        data = openai_batch.batch_jsonl(requests, model=config.model)
        file_id = openai_batch.file_upload(config, data=data, filename=f"parsimony-bulk-{bulk.pk}.jsonl")
        BulkJob.objects.filter(pk=bulk.pk, provider_input_file_id="").update(provider_input_file_id=file_id)
        bulk.refresh_from_db(fields=["provider_input_file_id"])
    state = openai_batch.batch_submit(config, input_file_id=bulk.provider_input_file_id,
                                      metadata={"parsimony_bulk_job": str(bulk.pk)})
    BulkJob.objects.filter(pk=bulk.pk, provider_batch_id="").update(provider_batch_id=state.id,
                                                                    provider_status=state.status)
    bulk.refresh_from_db(fields=["provider_batch_id", "provider_status"])


def _settle(bulk: BulkJob, config, state, progress) -> None:
    """Every pending row from the finished batch's output and error files (one transaction each)."""

    results = _results(config, state)
    price, charged = _settlement_prices(bulk)
    pending = list(bulk.rows.filter(status=RowStatus.PENDING).select_related("query_run").order_by("position"))
    per_row = bulk.estimate / max(1, bulk.rows_total)
    for n, row in enumerate(pending, start=1):
        result = results.get(str(row.pk))
        _row_settle(bulk, row, result, state, price=price, charged=charged)
        if bulk.reservation is not None:  # the hold: what is spent plus the bound of the rows left
            reservation_shrink(reservation=bulk.reservation,
                               to=hold_billed(bulk.reservation) + per_row * (len(pending) - n))
        progress(bulk.rows_total - len(pending) + n, bulk.rows_total, f"settled {n} of {len(pending)} answers")


def _results(config, state) -> dict:
    """custom_id -> result from the ended batch's output and error files (none: nothing answered)."""
    from workers.runtime import openai_batch

    return openai_batch.batch_results(config, state=state) if state.output_file_id or state.error_file_id else {}


def _settlement_prices(bulk: BulkJob) -> tuple[Price, Price]:
    """The endpoint's price in force and what a row is charged: its batch price, or — with no batch price any
    more (a newer price row without one) — the normal price, never less than was spent."""
    price = price_current(model_name=bulk.pipeline.model_endpoint.price_name)
    return price, price if batch_price_problem(price) else batch_price(price)


@transaction.atomic
def _row_settle(bulk: BulkJob, row: BulkRow, result, state, *, price: Price, charged: Price) -> None:
    from apps.bulk.services import _row_failed, _rows_store, _run_close
    from apps.costs.tokens import prompt_tokens_bound, text_tokens_bound
    from apps.rag.models import QueryRun
    from apps.rag.question_runner import engine_config, question_hooks
    from workers.rag.pipeline import PipelineResult, RetrievedChunk, citations, with_quality

    if not BulkRow.objects.select_for_update().filter(pk=row.pk, status=RowStatus.PENDING).exists():
        return  # settled by an earlier run of this stage
    if not row.prepared.get("run_id"):  # never sent (cannot happen after a submit; kept safe)
        BulkRow.objects.filter(pk=row.pk).update(status=RowStatus.FAILED, error="never sent to the provider")
        return
    run = QueryRun.objects.select_related("pipeline__model_endpoint", "team", "user", "api_key").get(
        pk=row.prepared["run_id"])
    if result is None or not result.ok:
        error = result.error if result is not None else f"the provider batch ended {state.status} without an answer"
        _rows_store(bulk, [_row_failed(row, run, ProviderBatchError(error))])
        return
    started = time.perf_counter()
    endpoint = bulk.pipeline.model_endpoint
    # The run's own ledger context (its team, user and key are the job's: bulk's _run_open).
    hooks = question_hooks(run=run, reservation=bulk.reservation)
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens) \
        if result.usage_reported else Usage(prompt_tokens=prompt_tokens_bound(endpoint, row.prepared["messages"]),
                                            completion_tokens=text_tokens_bound(endpoint, result.text))
    record = usage_record(context=hooks.context, stage=Stage.GENERATE, model_name=endpoint.price_name, usage=usage,
                          price=charged, finish_reason=result.finish_reason, endpoint=endpoint,
                          reservation=bulk.reservation)
    saving = cost_of(usage=usage, price=price) - record.cost
    hooks.retrieval_record = UsageRecord.objects.filter(query_run_id=run.pk, stage=Stage.RETRIEVE).first()
    # The baseline is naive RAG at the endpoint's normal price: the batch discount counts as a saving.
    normal = copy.copy(record)
    normal.price_input_per_mtok, normal.price_output_per_mtok = price.input_per_mtok, price.output_per_mtok
    normal.price_cached_input_per_mtok = price.input_per_mtok
    hooks.generation_record = normal
    chunks = [RetrievedChunk(**chunk) for chunk in row.prepared.get("chunks", [])]
    try:
        outcome = with_quality(
            PipelineResult(answer=result.text, finish_reason=result.finish_reason,
                           citations=citations(chunks, result.text), baseline_prompt_tokens=usage.prompt_tokens),
            question=row.question, chunks=chunks, config=engine_config(run=run, endpoint=endpoint), hooks=hooks,
            confidence=None,
        )
    except Exception as exc:
        logger.exception("bulk job %s row %s: the quality check failed", bulk.pk, row.position)
        _rows_store(bulk, [_row_failed(row, run, exc)])
        return
    fields = {
        "answer": outcome.answer, "citations": outcome.citations,
        "quality_label": (outcome.quality or {}).get("label", ""), "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens, "tokens_saved": 0, "fallback": False, "batch_size": 1,
    }
    _rows_store(bulk, [_run_close(row, run, hooks, outcome, started, extra_cost=ZERO, fields=fields)])
    BulkJob.objects.filter(pk=bulk.pk).update(provider_savings=F("provider_savings") + saving)


# --------------------------------------------------------------------------- ending


def provider_batch_cancel(*, bulk: BulkJob) -> str | None:
    """Ask the provider to cancel the job's batch, if it has one still running; its new status (None: none
    to cancel). A provider that cannot be reached is logged: the batch then runs out its window."""
    from workers.runtime import openai_batch

    if bulk.mode != BulkMode.PROVIDER_BATCH or not bulk.provider_batch_id or bulk.pipeline is None:
        return None
    if bulk.provider_status in openai_batch.TERMINAL or bulk.provider_status == "cancelling":
        return None
    try:
        state = openai_batch.batch_cancel(endpoint_config(bulk.pipeline.model_endpoint),
                                          batch_id=bulk.provider_batch_id)
    except Exception as exc:  # unreachable provider, bad key: the cancel of the job itself goes on
        logger.warning("bulk job %s: cancelling provider batch %s failed: %s", bulk.pk, bulk.provider_batch_id, exc)
        return None
    BulkJob.objects.filter(pk=bulk.pk).update(provider_status=state.status, provider_polled_at=timezone.now())
    return state.status


def provider_batch_job_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """A provider-batch job cancelled or failed for good (``apps.core.jobs.JOB_ENDINGS``): its provider batch is
    cancelled too, and what it answered before the cancel took effect is settled later
    (``provider_batch_after_end``, sent once this commits). A redelivered job keeps it (its next attempt
    polls it)."""
    from apps.core.dispatch import task_send
    from workers.runtime import openai_batch

    if outcome == JobEnd.REDELIVERED:
        return
    bulk = BulkJob.objects.select_related("pipeline__model_endpoint").filter(job=job).first()
    if bulk is None or bulk.is_finished or not bulk.provider_batch_id:
        return
    provider_batch_cancel(bulk=bulk)
    bulk.refresh_from_db(fields=["provider_status"])
    if bulk.provider_status not in openai_batch.TERMINAL or bulk.rows.filter(status=RowStatus.PENDING).exists():
        task_send(task_name=AFTER_END_TASK, args=(bulk.pk, job.queue), queue=job.queue, countdown=poll_interval_s())


def provider_batch_after_end(*, bulk_job_id: int) -> BulkJob | ProviderWait | None:
    """After a provider-batch job ended while its batch ran (cancelled, or failed for good): poll the batch
    until it has ended; then each pending row the provider answered is settled as a finished job settles it
    (its answer kept, billed at the batch price under the job's hold, its quality checked) and its cost
    booked to the budgets (``reservation_true_up``: the hold was settled when the job ended), and each it did
    not answer fails. Idempotent: a row is settled only while pending, each in its own transaction."""
    from apps.bulk.services import bulk_job_for_work, bulk_totals_store
    from workers.runtime import openai_batch
    from workers.runtime.openai_compat import EndpointError

    bulk = bulk_job_for_work(bulk_job_id)
    if bulk is None or not bulk.is_finished or not bulk.provider_batch_id or bulk.pipeline is None:
        return bulk
    if not bulk.rows.filter(status=RowStatus.PENDING).exists():
        return bulk
    config = endpoint_config(bulk.pipeline.model_endpoint)
    try:
        state = openai_batch.batch_get(config, batch_id=bulk.provider_batch_id)
    except EndpointError as exc:
        if exc.retryable:
            return ProviderWait(status=bulk.provider_status or "unknown", countdown=poll_interval_s(),
                                message=f"provider batch unreachable ({exc}); polling again")
        state = None  # a refused key, a batch the provider no longer knows: nothing more will come
        logger.warning("bulk job %s: provider batch %s cannot be read after the job ended: %s",
                       bulk.pk, bulk.provider_batch_id, exc)
    if state is not None:
        BulkJob.objects.filter(pk=bulk.pk).update(provider_status=state.status, provider_polled_at=timezone.now())
        if not state.finished:
            return ProviderWait(status=state.status, countdown=poll_interval_s(),
                                message=f"provider batch {state.status} after the job ended; polling again")
    results = _results(config, state) if state is not None else {}
    price, charged = _settlement_prices(bulk)
    for row in bulk.rows.filter(status=RowStatus.PENDING).order_by("position"):
        result = results.get(str(row.pk))
        if result is None or not result.ok:
            error = NOT_ANSWERED if result is None else f"ProviderBatchError: {result.error}"
            BulkRow.objects.filter(pk=row.pk, status=RowStatus.PENDING).update(status=RowStatus.FAILED,
                                                                              error=error[:10_000])
            continue
        with transaction.atomic():
            _row_settle(bulk, row, result, state, price=price, charged=charged)
            # The job's ending unlinked its pending rows' runs (failed as cancelled); this one was answered.
            BulkRow.objects.filter(pk=row.pk, query_run=None).update(query_run_id=row.prepared.get("run_id"))
            if bulk.reservation is not None:
                reservation_true_up(reservation=bulk.reservation)
    # The job's totals again (its cost, rows and savings now count the rows settled here).
    return bulk_totals_store(bulk=bulk)


__all__ = [
    "AFTER_END_TASK", "MODES", "ProviderBatchError", "ProviderWait", "provider_batch_after_end",
    "provider_batch_cancel", "provider_batch_job_end", "provider_batch_run",
]
