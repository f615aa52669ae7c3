"""Writes for bulk question jobs: parse the uploaded file, hold the whole job's worst case, run it in batches.

bulk_job_start (web process): parse and check the file (a clear error, nothing stored, when it is bad),
reserve the worst case of every row against every budget BEFORE anything runs (402, nothing created, when a
budget cannot cover it), store the rows and enqueue one ``bulk.run`` job. bulk_job_execute (worker): answer
the pending rows, k per prompt where the pipeline allows (``workers.prompting.batch``), each finished batch's
rows stored with their costs in one transaction (a redelivered job skips them), the hold shrunk to what is
spent plus the bound of the rows left, and settled to the ledger when the job ends.

Every row is a QueryRun too (its retrieval, quality check, cost, baseline and savings, like any query), so
the usage page counts its savings against the same naive-RAG baseline. A batch call's ledger row belongs
to no single run: its cost is split between the batch's rows, exactly (``workers.prompting.batch.allocate``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from apps.bulk.models import BulkJob, BulkRow, BulkStatus, RowStatus
from apps.core.errors import ValidationFailed
from apps.core.jobs import JobEnd
from apps.core.services import job_start
from apps.costs.cost_model import device_cost, device_seconds_bound
from apps.costs.metering import model_call
from apps.costs.models import ZERO, EndpointKind
from apps.costs.pricing import MONEY_QUANTUM, money, worst_case_cost
from apps.costs.selectors import query_run_cost
from apps.costs.services import LedgerContext, price_current, reservation_settle
from apps.costs.services.budgets import reservation_shrink
from apps.costs.services.holds import hold_open
from apps.costs.services.ledger import hold_billed
from apps.costs.tokens import endpoint_context_window, text_tokens_bound
from apps.rag.models import Pipeline, QueryOrigin, QueryRun, QueryStatus, Retriever

logger = logging.getLogger(__name__)

MAX_ROWS = 5_000
MAX_BYTES = 10 * 1024 * 1024
MAX_QUESTION_CHARS = 4_000
FORMATS = ("csv", "jsonl")
_FRAMING_TOKENS = 128  # instruction, "Context:", numbering: as apps.rag.services' hold


# --------------------------------------------------------------------------- the input file


def bulk_input_parse(*, data: bytes, filename: str = "", input_format: str | None = None) -> tuple[str, list[dict]]:
    """(format, rows) of an uploaded file: CSV with a ``question`` column (``id`` and ``gold`` optional) or
    JSON Lines of objects with ``question``. Raises ValidationFailed naming the problem and where it is."""
    fmt = (input_format or "").lower() or ("jsonl" if filename.lower().endswith((".jsonl", ".ndjson", ".json"))
                                             else "csv")
    if fmt not in FORMATS:
        raise ValidationFailed(f"unknown input format {fmt!r} (valid: {', '.join(FORMATS)})")
    if not data or not data.strip():
        raise ValidationFailed("the file is empty: it needs at least one question")
    if len(data) > MAX_BYTES:
        raise ValidationFailed(f"the file is {len(data):,} bytes; at most {MAX_BYTES:,} are accepted")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"the file is not UTF-8 text (byte {exc.start})") from None
    raw = _csv_rows(text) if fmt == "csv" else _jsonl_rows(text)
    if not raw:
        raise ValidationFailed("the file has no questions")
    if len(raw) > MAX_ROWS:
        raise ValidationFailed(f"the file has {len(raw):,} questions; at most {MAX_ROWS:,} fit one job")
    rows, seen = [], set()
    for where, item in raw:
        question = str(item.get("question") or "").strip()
        if not question:
            raise ValidationFailed(f"{where}: the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValidationFailed(f"{where}: the question is longer than {MAX_QUESTION_CHARS:,} characters")
        row_id = str(item.get("id") if item.get("id") not in (None, "") else len(rows) + 1).strip()[:255]
        if row_id in seen:
            raise ValidationFailed(f"{where}: the id {row_id!r} is used twice")
        seen.add(row_id)
        gold = item.get("gold")
        gold = json.dumps(gold) if isinstance(gold, list) else str(gold or "")
        rows.append({"row_id": row_id, "question": question, "gold": gold})
    return fmt, rows


def _csv_rows(text: str) -> list[tuple[str, dict]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        columns = [str(name or "").strip().lower() for name in (reader.fieldnames or [])]
        if "question" not in columns:
            raise ValidationFailed(
                f"the CSV has no 'question' column (its header: {', '.join(columns) or 'none'})",
                detail={"columns": columns},
            )
        rows = []
        for row in reader:
            if None in row:
                raise ValidationFailed(f"CSV line {reader.line_num}: more fields than the header has")
            cleaned = {str(k).strip().lower(): v for k, v in row.items()}
            if not any((v or "").strip() for v in cleaned.values()):
                continue  # a blank line
            rows.append((f"CSV line {reader.line_num}", cleaned))
        return rows
    except csv.Error as exc:
        raise ValidationFailed(f"the CSV is malformed: {exc}") from None


def _jsonl_rows(text: str) -> list[tuple[str, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"JSONL line {number} is not JSON: {exc.msg}") from None
        if not isinstance(item, dict) or "question" not in item:
            raise ValidationFailed(f"JSONL line {number} is not an object with a 'question'")
        rows.append((f"JSONL line {number}", item))
    return rows


# --------------------------------------------------------------------------- starting a job


def pipeline_batch_problem(*, pipeline: Pipeline) -> str | None:
    """Why ``pipeline`` cannot pack several questions per prompt (None when it can): batch prompting builds
    plain messages from each question's retrieved passages, so it needs the naive strategy, no compression
    and no fixed context."""
    if pipeline.prompting_strategy != "naive":
        return f"its prompting strategy is {pipeline.prompting_strategy!r} (batching needs 'naive')"
    if pipeline.compression_method != "none":
        return f"it compresses ({pipeline.compression_method!r}); batching needs compression 'none'"
    if pipeline.has_fixed_context:
        return "it answers over a fixed context"
    return None


def _prompt_tokens_bound(*, pipeline: Pipeline, question: str) -> int:
    """The most prompt tokens one question's naive prompt can have: the question, the system prompt, the
    framing and top_k chunks of the corpora's largest chunk size, capped by what the engine lets a prompt
    hold (the model's window less the output cap, and the ceiling)."""
    endpoint = pipeline.model_endpoint
    chunk = max([c.chunk_tokens for c in pipeline.corpora.all()] or [0])
    passages = 0 if pipeline.retriever == Retriever.NONE else pipeline.top_k * (chunk + 16)
    tokens = (text_tokens_bound(endpoint, question) + text_tokens_bound(endpoint, pipeline.system_prompt)
              + _FRAMING_TOKENS + passages)
    cap = max(1, min(pipeline.max_output_tokens, endpoint.max_output_tokens))
    window, ceiling = endpoint_context_window(endpoint), settings.PARSIMONY_MAX_PROMPT_TOKENS
    return min(tokens, min(window - cap if window else ceiling, ceiling))


def _call_bound(*, pipeline: Pipeline, prompt_tokens: int, output_tokens: int) -> Decimal:
    endpoint = pipeline.model_endpoint
    price = price_current(model_name=endpoint.price_name)
    tokens = worst_case_cost(price=price, prompt_tokens=prompt_tokens, max_output_tokens=output_tokens)
    if endpoint.kind != EndpointKind.LOCAL:
        return tokens
    seconds, device = device_seconds_bound(model=endpoint.price_name, tokens_in=prompt_tokens,
                                           tokens_out=output_tokens, price=price)
    return tokens + device_cost(price=price, seconds=seconds, device=device)


def _row_bound(*, pipeline: Pipeline, question: str, batch_size: int) -> Decimal:
    """The worst case of one row: its retrieval, its quality check's embedding, and its generation: alone
    (k = 1), or its share of a batch call plus answering it alone if its batch answer does not parse."""
    from apps.corpora.services.embedding import texts_bound
    from apps.corpora.services.search import search_bound
    from apps.costs.defaults import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PRICE_NAME

    cap = max(1, min(pipeline.max_output_tokens, pipeline.model_endpoint.max_output_tokens))
    prompt = _prompt_tokens_bound(pipeline=pipeline, question=question)
    single = _call_bound(pipeline=pipeline, prompt_tokens=prompt, output_tokens=cap)
    bound = single
    if batch_size > 1:
        share = _call_bound(pipeline=pipeline, prompt_tokens=prompt * batch_size, output_tokens=cap * batch_size)
        bound += share / batch_size + single  # the batch's share, and the fallback (its retrieval again too)
    if pipeline.retriever != Retriever.NONE:
        search = search_bound(corpora=list(pipeline.corpora.all()), query=question, retriever=pipeline.retriever)
        bound += search * (2 if batch_size > 1 else 1)
    # The quality check embeds the answer's sentences and the passages once (QueryHooks.embed_for_quality).
    quality_texts = ["x " * min(prompt, 512)] * (pipeline.top_k + 1)
    bound += texts_bound(model_name=LOCAL_EMBEDDING_MODEL, texts=quality_texts, slab=None,
                         price=price_current(model_name=LOCAL_EMBEDDING_PRICE_NAME))
    return bound


@transaction.atomic
def bulk_job_start(
    *,
    team,
    pipeline: Pipeline,
    data: bytes,
    filename: str = "",
    input_format: str | None = None,
    batch_size: int = 1,
    user=None,
    api_key=None,
    mode: str = "direct",
) -> BulkJob:
    """Check the file, hold the whole job's worst case (402 when a budget cannot cover it: nothing is
    created, nothing runs), store the rows and enqueue the job. Bad input: ValidationFailed, nothing stored.
    ``mode="provider_batch"``: answered through the endpoint's provider Batch API (apps/bulk/provider_batch.py)."""
    from apps.rag.selectors import query_queue
    from workers.prompting.batch import MAX_BATCH_SIZE

    if pipeline.team_id != team.pk:
        raise ValidationFailed("that pipeline belongs to another team")
    try:
        k = int(batch_size)
    except (TypeError, ValueError):
        raise ValidationFailed(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}") from None
    if not 1 <= k <= MAX_BATCH_SIZE:
        raise ValidationFailed(f"batch_size must be from 1 to {MAX_BATCH_SIZE}, not {k}")
    if k > 1:
        problem = pipeline_batch_problem(pipeline=pipeline)
        if problem:
            raise ValidationFailed(f"pipeline {pipeline.name!r} cannot batch questions: {problem}; use batch_size 1",
                                   detail={"fields": {"batch_size": problem}})
    _mode_check(pipeline=pipeline, mode=mode, batch_size=k)
    endpoint = pipeline.model_endpoint
    if not endpoint.enabled:
        raise ValidationFailed(f"model {endpoint.name!r} is disabled")
    fmt, rows = bulk_input_parse(data=data, filename=filename, input_format=input_format)
    # Every row is bounded by the bound of the longest question (one computation, whatever the file's size).
    longest = max((row["question"] for row in rows), key=len)
    estimate = (_row_bound(pipeline=pipeline, question=longest, batch_size=k) * len(rows)).quantize(
        MONEY_QUANTUM, rounding=ROUND_CEILING)
    reservation = hold_open(
        path="bulk",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=estimate,
        description=f"bulk job of {len(rows)} questions on {pipeline.name}",
        ttl_s=int(settings.PARSIMONY_MODEL_WALL_TIME_S * 3 + 300),
    ).reservation
    bulk = BulkJob.objects.create(
        team=team, pipeline=pipeline, created_by=user if getattr(user, "pk", None) else None, api_key=api_key,
        reservation=reservation, filename=filename[:255], input_format=fmt, batch_size=k, rows_total=len(rows),
        estimate=estimate, mode=mode,
    )
    BulkRow.objects.bulk_create(BulkRow(bulk_job=bulk, position=n, **row) for n, row in enumerate(rows))
    bulk.job = job_start(
        kind="bulk.run", team=team, created_by=user,
        params={"bulk_job_id": bulk.pk, "reservation_id": reservation.pk}, total=len(rows),
        queue=query_queue(endpoint=endpoint, pipeline=pipeline),
    )
    bulk.save(update_fields=["job"])
    return bulk


def _mode_check(*, pipeline: Pipeline, mode: str, batch_size: int) -> None:
    from apps.bulk.provider_batch_rules import MODES, provider_batch_problem

    if mode not in MODES:
        raise ValidationFailed(f"unknown mode {mode!r} (valid: {', '.join(MODES)})",
                               detail={"fields": {"mode": f"one of {', '.join(MODES)}"}})
    problem = provider_batch_problem(pipeline=pipeline, batch_size=batch_size,
                                     prompt_problem=pipeline_batch_problem(pipeline=pipeline)) \
        if mode == "provider_batch" else None
    if problem:
        raise ValidationFailed(f"pipeline {pipeline.name!r} cannot run as a provider batch: {problem}",
                               detail={"fields": {"mode": problem}})


# --------------------------------------------------------------------------- running a job


def bulk_job_for_work(bulk_job_id: int) -> BulkJob | None:
    """The job a worker was handed, with what running it reads; None (logged) when it no longer exists."""
    bulk = BulkJob.objects.select_related("pipeline__model_endpoint", "team", "created_by", "api_key",
                                          "reservation").filter(pk=bulk_job_id).first()
    if bulk is None:
        logger.warning("bulk job %s does not exist", bulk_job_id)
    return bulk


def bulk_job_execute(*, bulk_job_id: int, progress=None) -> BulkJob | None:
    """Answer a bulk job's pending rows (in a worker). Idempotent: rows stored as done are never redone;
    rows of a batch that was cut off (a dead worker) start over, their unfinished runs failed."""
    progress = progress or (lambda *args, **kwargs: None)
    bulk = bulk_job_for_work(bulk_job_id)
    if bulk is None or bulk.is_finished:
        return bulk
    if bulk.pipeline is None:
        raise ValidationFailed("the job's pipeline was deleted")
    BulkJob.objects.filter(pk=bulk.pk).update(status=BulkStatus.RUNNING)
    pending = list(bulk.rows.filter(status=RowStatus.PENDING).order_by("position"))
    _cut_off_runs_fail([row.pk for row in pending])
    per_row = bulk.estimate / max(1, bulk.rows_total)
    k = bulk.batch_size
    done = bulk.rows_total - len(pending)
    progress(done, bulk.rows_total, f"{done} of {bulk.rows_total} questions answered")
    for start in range(0, len(pending), k):
        batch = pending[start:start + k]
        if len(batch) == 1:
            _rows_store(bulk, [_row_alone(bulk, batch[0])])
        else:
            _rows_store(bulk, _batch_answer(bulk, batch))
        done += len(batch)
        if bulk.reservation is not None:  # the hold: what is spent plus the bound of the rows left
            left = len(pending) - start - len(batch)
            reservation_shrink(reservation=bulk.reservation,
                               to=hold_billed(bulk.reservation) + per_row * left)
        progress(done, bulk.rows_total, f"{done} of {bulk.rows_total} questions answered")
    return bulk_job_finish(bulk=bulk)


def bulk_job_finish(*, bulk: BulkJob, status: str = BulkStatus.SUCCEEDED, error: str = "") -> BulkJob:
    """Settle the job's hold to its ledger rows and store its totals."""
    if bulk.reservation_id:
        reservation_settle(reservation=bulk.reservation, actual=hold_billed(bulk.reservation))
    return bulk_totals_store(bulk=bulk, status=status, error=error[:10_000], finished_at=timezone.now())


def bulk_totals_store(*, bulk: BulkJob, **fields: Any) -> BulkJob:
    """Store the job's totals from its rows and its ledger rows (rows done, failed and fallen back; cost,
    naive baseline, savings), with ``fields`` (a finished job's status, error, end)."""
    totals = bulk.rows.aggregate(
        done=Count("pk", filter=Q(status=RowStatus.DONE)), failed=Count("pk", filter=Q(status=RowStatus.FAILED)),
        fallback=Count("pk", filter=Q(fallback=True)),
        baseline=Sum("query_run__baseline_cost", filter=Q(status=RowStatus.DONE)),
    )
    cost = hold_billed(bulk.reservation) if bulk.reservation_id else ZERO
    baseline = totals["baseline"] or ZERO
    BulkJob.objects.filter(pk=bulk.pk).update(
        rows_done=totals["done"], rows_failed=totals["failed"], batches_fallback=totals["fallback"], cost=cost,
        baseline_cost=money(baseline), savings=money(baseline - cost), **fields,
    )
    bulk.refresh_from_db()
    return bulk


def bulk_job_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """The job ended without its task finishing it (``apps.core.services.job_end``): redelivered, it waits
    (its finished rows stay); failed or cancelled, the job says so, its unfinished runs fail with it. The
    hold is settled to its ledger rows by ``apps.costs.services.holds.job_holds_end``."""
    bulk = BulkJob.objects.filter(job=job).first()
    if bulk is None or bulk.is_finished:
        return
    if outcome == JobEnd.REDELIVERED:
        BulkJob.objects.filter(pk=bulk.pk).update(status=BulkStatus.QUEUED)
        return
    _cut_off_runs_fail(list(bulk.rows.filter(status=RowStatus.PENDING).values_list("pk", flat=True)),
                       reason="cancelled" if outcome == JobEnd.CANCELLED else reason)
    totals = bulk.rows.aggregate(done=Count("pk", filter=Q(status=RowStatus.DONE)))
    BulkJob.objects.filter(pk=bulk.pk).update(
        status=BulkStatus.CANCELLED if outcome == JobEnd.CANCELLED else BulkStatus.FAILED,
        error=reason[:10_000], rows_done=totals["done"], finished_at=timezone.now(),
        cost=hold_billed(bulk.reservation) if bulk.reservation_id else ZERO,
    )


def _cut_off_runs_fail(row_ids: list[int], reason: str = "redelivered: the bulk job's batch was cut off") -> None:
    runs = QueryRun.objects.filter(bulk_row__pk__in=row_ids, status__in=(QueryStatus.QUEUED, QueryStatus.RUNNING))
    for run in runs:
        QueryRun.objects.filter(pk=run.pk).update(
            status=QueryStatus.FAILED, error=reason[:10_000], finished_at=timezone.now(),
            cost=query_run_cost(run.pk),
        )
    BulkRow.objects.filter(pk__in=row_ids, status=RowStatus.PENDING).update(query_run=None)


def _run_open(bulk: BulkJob, row: BulkRow) -> tuple[QueryRun, Any]:
    """A QueryRun for the row, and the query hooks that bill its retrieval and checks under the job's hold."""
    from apps.rag.question_runner import question_hooks

    pipeline = bulk.pipeline
    endpoint = pipeline.model_endpoint
    run = QueryRun.objects.create(
        team=bulk.team, pipeline=pipeline, endpoint=endpoint, user=bulk.created_by, api_key=bulk.api_key,
        reservation=bulk.reservation, question=row.question, status=QueryStatus.RUNNING, origin=QueryOrigin.BULK,
        max_output_tokens=max(1, min(pipeline.max_output_tokens, endpoint.max_output_tokens)),
    )
    BulkRow.objects.filter(pk=row.pk).update(query_run=run)
    return run, question_hooks(run=run, reservation=bulk.reservation)


def _row_alone(bulk: BulkJob, row: BulkRow, *, run: QueryRun | None = None, hooks: Any = None,
               extra_cost: Decimal = ZERO, shared: dict | None = None) -> dict:
    """Answer one row by the pipeline as a single query (k = 1, or the fallback of a batch)."""
    from apps.rag.question_runner import engine_config
    from workers.rag.pipeline import run_pipeline

    started = time.perf_counter()
    if run is None:
        run, hooks = _run_open(bulk, row)
    try:
        config = engine_config(run=run, endpoint=hooks.endpoint)
        outcome = run_pipeline(question=row.question, config=config, hooks=hooks)
    except Exception as exc:  # one bad row does not stop the job; its error is in the result file
        logger.exception("bulk job %s row %s failed", bulk.pk, row.position)
        return _row_failed(row, run, exc, extra_cost)
    generation = hooks.generation_record
    fields = {
        "answer": outcome.answer, "citations": outcome.citations,
        "quality_label": (outcome.quality or {}).get("label", ""),
        "prompt_tokens": generation.prompt_tokens if generation else 0,
        "completion_tokens": generation.completion_tokens if generation else 0,
        "tokens_saved": 0, "fallback": shared is not None, "batch_size": 1,
    }
    if shared is not None:  # its share of the batch call it was in, which also counts
        fields["prompt_tokens"] += shared["prompt_tokens"]
        fields["completion_tokens"] += shared["completion_tokens"]
        fields["tokens_saved"] = -shared["prompt_tokens"]
    return _run_close(row, run, hooks, outcome, started, extra_cost=extra_cost, fields=fields)


def _run_close(row: BulkRow, run: QueryRun, hooks: Any, outcome: Any, started: float, *, extra_cost: Decimal,
               fields: dict) -> dict:
    """The row's run written as query_run_execute writes one, its cost its own ledger rows plus its share
    of a batch call (``extra_cost``); the baseline is naive RAG for the question alone."""
    from apps.rag.question_runner import answered_fields

    actual = query_run_cost(run.pk) + extra_cost
    return {
        "row": row, "run": run, "status": RowStatus.DONE, "cost": actual,
        "run_fields": {
            **answered_fields(hooks=hooks, outcome=outcome, actual=actual),
            "prompt_tokens": fields["prompt_tokens"], "completion_tokens": fields["completion_tokens"],
            "latency_ms": int((time.perf_counter() - started) * 1000), "finished_at": timezone.now(),
        },
        "row_fields": {**fields, "cost": actual, "error": ""},
    }


def _row_failed(row: BulkRow, run: QueryRun, exc: Exception, extra_cost: Decimal = ZERO) -> dict:
    actual = query_run_cost(run.pk) + extra_cost
    error = f"{type(exc).__name__}: {exc}"[:10_000]
    return {
        "row": row, "run": run, "status": RowStatus.FAILED, "cost": actual,
        "run_fields": {"status": QueryStatus.FAILED, "error": error, "cost": actual, "finished_at": timezone.now()},
        "row_fields": {"error": error, "cost": actual},
    }


@transaction.atomic
def _rows_store(bulk: BulkJob, outcomes: list[dict]) -> None:
    """A finished batch's rows and runs, in one transaction: a redelivery finds them all done or none."""
    for outcome in outcomes:
        QueryRun.objects.filter(pk=outcome["run"].pk).update(**outcome["run_fields"])
        BulkRow.objects.filter(pk=outcome["row"].pk).update(status=outcome["status"], **outcome["row_fields"])
    BulkJob.objects.filter(pk=bulk.pk).update(
        rows_done=bulk.rows.filter(status=RowStatus.DONE).count(),
        rows_failed=bulk.rows.filter(status=RowStatus.FAILED).count(),
    )


def _batch_answer(bulk: BulkJob, rows: list[BulkRow]) -> list[dict]:
    """k rows in one prompt: each retrieves its own passages, one metered call answers all, the numbered
    answers are parsed back; a row whose answer does not parse is answered alone (the fallback). The call's
    cost and tokens are split between the k rows exactly (shared instruction tokens evenly)."""
    from apps.rag.question_runner import engine_config
    from workers.prompting.base import Passage
    from workers.prompting.batch import (
        BatchItem,
        allocate,
        build_batch_messages,
        parse_batch_answers,
        question_block,
        shared_tokens_split,
    )
    from workers.prompting.naive import NaivePrompting
    from workers.rag.pipeline import PipelineResult, citations, with_quality
    from workers.runtime.meter import count_chat_tokens, count_tokens

    pipeline = bulk.pipeline
    started = time.perf_counter()
    opened = [_run_open(bulk, row) for row in rows]
    config = engine_config(run=opened[0][0], endpoint=opened[0][1].endpoint)
    hits = []
    for row, (_run, hooks) in zip(rows, opened, strict=True):
        try:
            hits.append(hooks.retrieve(row.question, config.top_k))
        except Exception as exc:
            logger.exception("bulk job %s row %s: retrieval failed", bulk.pk, row.position)
            return [_row_failed(r, run_, exc) for r, (run_, _) in zip(rows, opened, strict=True)]
    items = [BatchItem(question=row.question, passages=[Passage(chunk_id=c.chunk_id, title=c.title, text=c.text)
                                                         for c in chunks]) for row, chunks in zip(rows, hits,
                                                                                                 strict=True)]
    messages = build_batch_messages(system_prompt=pipeline.system_prompt, items=items)
    target = opened[0][1].model()
    if config.max_prompt_tokens is not None and count_chat_tokens(target, messages) > config.max_prompt_tokens:
        # Too long to pack: each row alone (its retrieval again: billed, it is the fallback).
        return [_row_alone(bulk, row, run=run, hooks=hooks) for row, (run, hooks) in zip(rows, opened, strict=True)]
    k = len(rows)
    cap = max(1, min(config.max_output_tokens * k, pipeline.model_endpoint.max_output_tokens))
    batch_context = LedgerContext(team=bulk.team, user=bulk.created_by, api_key=bulk.api_key,
                                  pipeline_name=pipeline.name)
    call = model_call(endpoint=pipeline.model_endpoint, messages=messages, context=batch_context,
                      max_output_tokens=cap, reservation=bulk.reservation, decoding=pipeline.decoding_options)
    record = call.record
    answers = parse_batch_answers(call.text, k)
    own = [count_tokens(target, question_block(n, item)) for n, item in enumerate(items, start=1)]
    prompt_shares = shared_tokens_split(call_prompt_tokens=record.prompt_tokens, own_tokens=own)
    completion_shares = allocate(record.completion_tokens,
                                 [count_tokens(target, answer) if answer else 0 for answer in answers])
    cost_shares = allocate(record.cost, [p + c for p, c in zip(prompt_shares, completion_shares, strict=True)],
                           MONEY_QUANTUM)
    outcomes = []
    for n, (row, (run, hooks), chunks, answer) in enumerate(zip(rows, opened, hits, answers, strict=True)):
        shared = {"prompt_tokens": prompt_shares[n], "completion_tokens": completion_shares[n]}
        if answer is None:
            outcomes.append(_row_alone(bulk, row, run=run, hooks=hooks, extra_cost=cost_shares[n], shared=shared))
            continue
        passages = list(items[n].passages)
        naive = NaivePrompting().build_messages(system_prompt=pipeline.system_prompt, question=row.question,
                                                passages=passages)
        naive_tokens = count_chat_tokens(target, naive)
        # The row's part of the call, as a ledger row's fields: the naive baseline's output tokens are its own.
        hooks.generation_record = copy.copy(record)
        hooks.generation_record.completion_tokens = completion_shares[n]
        try:
            outcome = with_quality(
                PipelineResult(answer=answer, finish_reason=call.finish_reason, citations=citations(chunks, answer),
                               baseline_prompt_tokens=naive_tokens),
                question=row.question, chunks=chunks, config=config, hooks=hooks, confidence=None,
            )
        except Exception as exc:
            outcomes.append(_row_failed(row, run, exc, cost_shares[n]))
            continue
        fields = {
            "answer": outcome.answer, "citations": outcome.citations,
            "quality_label": (outcome.quality or {}).get("label", ""), "prompt_tokens": prompt_shares[n],
            "completion_tokens": completion_shares[n], "tokens_saved": naive_tokens - prompt_shares[n],
            "fallback": False, "batch_size": k,
        }
        outcomes.append(_run_close(row, run, hooks, outcome, started, extra_cost=cost_shares[n], fields=fields))
    return outcomes
