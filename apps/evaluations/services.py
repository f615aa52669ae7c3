"""Writes for evaluation sets and runs: upload or pick a set, reserve the worst case, run it, score it.

``eval_run_start`` (web process): every (question, pipeline) pair's worst case summed and held against
every budget before anything runs (BudgetExceeded, nothing created, when it cannot be covered), then one
``evaluations.run`` job. ``eval_run_execute`` (worker): for each pair in turn, the pair's worst case is
carved out of the run's hold into a hold of its own (the run's hold shrinks by as much), the question runs
as a real QueryRun under it (``apps.rag.services.query_run_execute``: metered, its hold settled to its
ledger rows), and the answer is scored with the benchmarks' metrics (``workers.rag.answer_metrics``).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.core.errors import ValidationFailed
from apps.core.jobs import JobEnd
from apps.core.models import FINISHED_STATUSES, JobStatus
from apps.core.services import job_start
from apps.costs.models import ZERO, EndpointKind, Reservation, ReservationStatus
from apps.costs.pricing import worst_case_cost
from apps.costs.services import LedgerContext, price_current
from apps.costs.services.holds import Hold, hold_open
from apps.evaluations.models import EvalRow, EvalRun, EvalSet, EvalSource
from apps.evaluations.parsing import SHIPPED_SETS, eval_items_parse, shipped_items
from apps.rag.models import Pipeline, QueryOrigin, QueryRun, Retriever
from workers.rag.answer_metrics import contained, exact_match, f1_score

logger = logging.getLogger(__name__)

EVAL_JOB_KIND = "evaluations.run"
MAX_PIPELINES = 8
# A row's answer is right when a gold answer is contained in it (the benchmarks' headline metric).
CORRECT_AT = 1.0


# --------------------------------------------------------------------------- sets


def eval_set_upload(*, team, name: str, filename: str, data: bytes, user=None, description: str = "") -> EvalSet:
    """Store an uploaded labelled set (CSV / JSONL / JSON); a file that does not read whole is refused
    (ValidationFailed naming the line) and nothing is stored."""
    name = (name or "").strip() or (filename or "").rsplit("/", 1)[-1]
    if not name:
        raise ValidationFailed("the set needs a name")
    if EvalSet.objects.filter(team=team, name=name).exists():
        raise ValidationFailed(f"the team already has an evaluation set named {name!r}")
    items = eval_items_parse(filename=filename, data=data)
    return EvalSet.objects.create(
        team=team, name=name[:200], description=description, source=EvalSource.UPLOAD, filename=filename[:255],
        items=items, created_by=user if getattr(user, "pk", None) else None,
    )


def eval_set_from_shipped(*, team, shipped: str, user=None) -> EvalSet:
    """The team's copy of a shipped set (made once; picked again, the same set is returned)."""
    items = shipped_items(shipped)
    existing = EvalSet.objects.filter(team=team, source=EvalSource.SHIPPED, filename=shipped).first()
    if existing is not None:
        return existing
    name = shipped if not EvalSet.objects.filter(team=team, name=shipped).exists() else f"{shipped} (shipped)"
    return EvalSet.objects.create(
        team=team, name=name, description=SHIPPED_SETS[shipped][1], source=EvalSource.SHIPPED, filename=shipped,
        items=items, created_by=user if getattr(user, "pk", None) else None,
    )


def eval_set_delete(*, eval_set: EvalSet) -> None:
    if eval_set.runs.exclude(status__in=FINISHED_STATUSES).exists():
        raise ValidationFailed("an evaluation of this set is still running")
    eval_set.delete()


# --------------------------------------------------------------------------- the worst case


def eval_question_worst_case(*, pipeline: Pipeline, question: str) -> Decimal:
    """The most one question through ``pipeline`` can cost, from its configuration alone: the question's
    embedding for retrieval, a generation reading the model's whole prompt window and writing the whole
    output cap (device time at the cost model's bound for a local model, every token for a remote one),
    the same again for a compression method, and the sentence/passage embeddings of an extractive answer
    and of the quality check over that window. A question's own hold may still grow past it while it runs
    (as every query's does), only where the budgets allow."""
    from apps.corpora.services.embedding import embedding_bound
    from apps.corpora.services.search import search_bound
    from apps.costs.cost_model import device_cost, device_seconds_bound
    from apps.costs.defaults import LOCAL_EMBEDDING_MODEL
    from apps.costs.tokens import endpoint_context_window
    from apps.rag.question_runner import pipeline_extractive

    endpoint = pipeline.model_endpoint
    cap = max(1, min(pipeline.max_output_tokens, endpoint.max_output_tokens))
    window, ceiling = endpoint_context_window(endpoint), settings.PARSIMONY_MAX_PROMPT_TOKENS
    prompt = max(1, min(window - cap if window else ceiling, ceiling))
    total = ZERO
    if pipeline.retriever != Retriever.NONE:
        total += search_bound(corpora=list(pipeline.corpora.all()), query=question, retriever=pipeline.retriever)
    price = price_current(model_name=endpoint.price_name)
    generation = worst_case_cost(price=price, prompt_tokens=prompt, max_output_tokens=cap)
    if endpoint.kind == EndpointKind.LOCAL:
        seconds, device = device_seconds_bound(model=endpoint.price_name, tokens_in=prompt, tokens_out=cap, price=price)
        generation += device_cost(price=price, seconds=seconds, device=device)
    compresses = pipeline.compression_method not in ("", "none")
    total += generation * (int(not pipeline_extractive(pipeline)) + int(compresses))
    # The question's UTF-8 bytes bound its tokens (byte-level BPE) without loading a tokenizer here.
    embed_tokens = prompt + len(question.encode("utf-8")) + 2
    total += 2 * embedding_bound(model_name=LOCAL_EMBEDDING_MODEL, tokens=embed_tokens)
    return total


def _pairs(eval_set: EvalSet, pipelines: list[Pipeline]) -> list[tuple[Pipeline, int, dict[str, Any]]]:
    return [(p, n, item) for p in pipelines for n, item in enumerate(eval_set.items)]


def eval_run_estimate(*, eval_set: EvalSet, pipelines: list[Pipeline]) -> Decimal:
    """The worst case of the whole run: every question through every pipeline."""
    return sum(
        (eval_question_worst_case(pipeline=p, question=item["question"]) for p, _, item in _pairs(eval_set, pipelines)),
        ZERO,
    )


# --------------------------------------------------------------------------- starting a run


@transaction.atomic
def eval_run_start(*, team, eval_set: EvalSet, pipelines: list[Pipeline], user=None, api_key=None) -> EvalRun:
    """Hold the run's worst case against every budget (BudgetExceeded, nothing created, when a budget
    cannot cover it), create the run and its job. Pipelines: the team's own, 1 to MAX_PIPELINES, distinct."""
    if eval_set.team_id != team.pk:
        raise ValidationFailed("unknown evaluation set")
    pipelines = list(dict.fromkeys(pipelines))
    if not pipelines:
        raise ValidationFailed("choose at least one pipeline to evaluate")
    if len(pipelines) > MAX_PIPELINES:
        raise ValidationFailed(f"at most {MAX_PIPELINES} pipelines per evaluation")
    for pipeline in pipelines:
        if pipeline.team_id != team.pk:
            raise ValidationFailed("unknown pipeline")
        if not pipeline.model_endpoint.enabled:
            raise ValidationFailed(
                f"pipeline {pipeline.name!r}: its model {pipeline.model_endpoint.name!r} is disabled"
            )
    if not eval_set.items:
        raise ValidationFailed("the evaluation set holds no questions")
    estimate = eval_run_estimate(eval_set=eval_set, pipelines=pipelines)
    hold = hold_open(
        path="evaluation",
        context=LedgerContext(team=team, user=user, api_key=api_key),
        estimate=estimate,
        description=f"evaluation of {eval_set.name!r}: {len(eval_set.items)} questions × {len(pipelines)} pipelines",
        ttl_s=int(settings.PARSIMONY_MODEL_WALL_TIME_S * 3 + 300),
    )
    run = EvalRun.objects.create(
        team=team, eval_set=eval_set, pipeline_names=[p.name for p in pipelines], reservation=hold.reservation,
        estimate=estimate, created_by=user if getattr(user, "pk", None) else None,
    )
    run.pipelines.set(pipelines)
    run.job = job_start(
        kind=EVAL_JOB_KIND, team=team, created_by=user,
        params={"eval_run_id": run.pk, "reservation_id": hold.reservation.pk,
                "api_key_id": getattr(api_key, "pk", None)},
        total=len(pipelines) * len(eval_set.items),
    )
    run.save(update_fields=["job"])
    return run


# --------------------------------------------------------------------------- running it (worker)


def _carve(*, run: EvalRun, context: LedgerContext, amount: Decimal, label: str) -> Hold:
    """Move ``amount`` of the run's hold into a new hold for one question: the run's hold is released and
    opened again smaller, in one transaction (the budget windows stay locked between the two)."""
    with transaction.atomic():
        main = Reservation.objects.select_for_update().get(pk=run.reservation_id) if run.reservation_id else None
        held = main is not None and main.status == ReservationStatus.HELD
        left = max(ZERO, main.estimate - amount) if main is not None and held else ZERO
        if main is not None and held:
            Hold(reservation=main, context=context).release()
        row_hold = hold_open(path="evaluation", context=context, estimate=amount,
                             description=f"evaluation #{run.pk}: {label}")
        rest = hold_open(path="evaluation", context=context, estimate=left,
                         description=f"evaluation #{run.pk}: the questions left") if held else None
        run.reservation = rest.reservation if rest is not None else None
        EvalRun.objects.filter(pk=run.pk).update(reservation=run.reservation)
    return row_hold


def _score(row: EvalRow, answer: str) -> dict[str, Any]:
    return {
        "answer": answer,
        "contained": contained(answer, row.gold),
        "f1": f1_score(answer, row.gold),
        "exact_match": exact_match(answer, row.gold),
    }


def _run_row(*, run: EvalRun, row: EvalRow, pipeline: Pipeline, context: LedgerContext) -> EvalRow:
    from apps.costs.services import BudgetExceeded
    from apps.rag.services import query_run_execute

    worst = eval_question_worst_case(pipeline=pipeline, question=row.question)
    try:
        hold = _carve(run=run, context=context, amount=worst, label=f"{pipeline.name} · {row.item_id}")
    except BudgetExceeded as exc:  # the question's worst case grew past what the budgets still allow
        EvalRow.objects.filter(pk=row.pk).update(
            status=JobStatus.FAILED, error=f"not run: {exc.message}"[:10_000], contained=0.0, f1=0.0,
            exact_match=0.0, finished_at=timezone.now(),
        )
        row.refresh_from_db()
        return row
    endpoint = pipeline.model_endpoint
    query = QueryRun.objects.create(
        team=run.team, pipeline=pipeline, endpoint=endpoint, user=context.user, api_key=context.api_key,
        reservation=hold.reservation, question=row.question, origin=QueryOrigin.EVALUATION,
        max_output_tokens=max(1, min(pipeline.max_output_tokens, endpoint.max_output_tokens)),
    )
    EvalRow.objects.filter(pk=row.pk).update(query_run=query, status=JobStatus.RUNNING)
    try:
        query_run_execute(query_run_id=query.pk)
    except Exception as exc:  # the run is failed with its reason and cost; the evaluation goes on
        logger.info("evaluation #%s: %s on %s failed: %s", run.pk, row.item_id, pipeline.name, exc)
    query.refresh_from_db()
    hold.reservation.refresh_from_db()
    if hold.reservation.status == ReservationStatus.HELD:  # the query never reached its settlement
        hold.settle()
    fields: dict[str, Any] = {
        "cost": query.cost, "latency_ms": query.latency_ms or 0, "quality_label": query.quality_label,
        "quality": query.quality or {}, "finished_at": timezone.now(),
    }
    if query.status == JobStatus.SUCCEEDED:
        fields.update(status=JobStatus.SUCCEEDED, error="", **_score(row, query.answer))
    else:
        # A failed answer scores 0: the question was asked, its cost counts, it was not answered.
        fields.update(status=JobStatus.FAILED, error=query.error[:10_000] or "failed", answer=query.answer,
                      contained=0.0, f1=0.0, exact_match=0.0)
    EvalRow.objects.filter(pk=row.pk).update(**fields)
    row.refresh_from_db()
    return row


def eval_run_execute(*, eval_run_id: int, progress=None) -> EvalRun | None:
    """Run every question of the set through every pipeline (in a worker). Rows already finished are
    kept (a run that starts over picks up where it stopped)."""
    progress = progress or (lambda *args, **kwargs: None)
    run = EvalRun.objects.select_related("team", "eval_set", "created_by", "job").filter(pk=eval_run_id).first()
    if run is None:
        logger.warning("evaluation run %s does not exist", eval_run_id)
        return None
    if run.is_finished:
        return run
    EvalRun.objects.filter(pk=run.pk).update(status=JobStatus.RUNNING, error="")
    api_key = None
    if run.job is not None and (run.job.params or {}).get("api_key_id"):
        from apps.accounts.models import ApiKey

        api_key = ApiKey.objects.filter(pk=run.job.params["api_key_id"]).first()
    by_name = {p.name: p for p in run.pipelines.select_related("model_endpoint").prefetch_related("corpora")}
    items = run.eval_set.items
    total = len(run.pipeline_names) * len(items)
    done = 0
    for name in run.pipeline_names:
        pipeline = by_name.get(name)
        context = LedgerContext(team=run.team, user=run.created_by, api_key=api_key, pipeline_name=name)
        for position, item in enumerate(items):
            row, _ = EvalRow.objects.get_or_create(
                run=run, pipeline_name=name, item_id=item["id"],
                defaults={"pipeline": pipeline, "position": position, "question": item["question"],
                          "gold": item["answers"]},
            )
            if row.status not in FINISHED_STATUSES:
                if pipeline is None:
                    EvalRow.objects.filter(pk=row.pk).update(status=JobStatus.FAILED, error="the pipeline was deleted",
                                                             finished_at=timezone.now())
                else:
                    _run_row(run=run, row=row, pipeline=pipeline, context=context)
            done += 1
            progress(done, total, f"{name}: question {position + 1} of {len(items)}")
    _run_finish(run=run, status=JobStatus.SUCCEEDED)
    run.refresh_from_db()
    return run


def _run_finish(*, run: EvalRun, status: str, error: str = "") -> None:
    """Settle what is left of the run's hold (nothing was billed under it: released) and close the run."""
    if run.reservation_id:
        reservation = Reservation.objects.select_related("team").get(pk=run.reservation_id)
        Hold(reservation=reservation, context=LedgerContext(team=reservation.team)).settle()
    cost = EvalRow.objects.filter(run=run).aggregate(total=Sum("cost"))["total"] or ZERO
    EvalRun.objects.filter(pk=run.pk).exclude(status__in=FINISHED_STATUSES).update(
        status=status, error=error[:10_000], cost=cost, finished_at=timezone.now()
    )


def eval_job_end(*, job, outcome: JobEnd, reason: str, work_stopped: bool = True) -> None:
    """The evaluation job ended without its task finishing (``apps.core.services.job_end``): unfinished rows
    and the run are failed (or cancelled) with the reason; the rows already billed keep their cost."""
    run = EvalRun.objects.filter(job=job).first()
    if run is None or run.is_finished:
        return
    if outcome == JobEnd.REDELIVERED:
        EvalRun.objects.filter(pk=run.pk).update(status=JobStatus.QUEUED)
        return
    status = JobStatus.CANCELLED if outcome == JobEnd.CANCELLED else JobStatus.FAILED
    error = "cancelled" if outcome == JobEnd.CANCELLED else reason
    if work_stopped:
        from apps.core.services import job_run_end
        from apps.costs.selectors import query_run_cost

        unfinished = EvalRow.objects.filter(run=run, query_run__isnull=False).exclude(status__in=FINISHED_STATUSES)
        for query_id in unfinished.values_list("query_run_id", flat=True):
            spent = query_run_cost(query_id)
            job_run_end(runs=QueryRun.objects.filter(pk=query_id), outcome=outcome, reason=reason, cost=spent)
            EvalRow.objects.filter(run=run, query_run_id=query_id).update(cost=spent)
        EvalRow.objects.filter(run=run).exclude(status__in=FINISHED_STATUSES).update(
            status=status, error=error[:10_000], finished_at=timezone.now()
        )
    cost = EvalRow.objects.filter(run=run).aggregate(total=Sum("cost"))["total"] or ZERO
    EvalRun.objects.filter(pk=run.pk).exclude(status__in=FINISHED_STATUSES).update(
        status=status, error=error[:10_000], cost=cost, finished_at=timezone.now()
    )
