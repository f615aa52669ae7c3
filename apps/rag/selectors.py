"""Reads for pipelines, query runs and savings; the names a pipeline may choose, for the pages.

The engine's registries (compression methods, prompting strategies, attention backends) are read
here, lazily, so that pages and the API never import ``workers`` themselves.
"""

from __future__ import annotations

import sys
from decimal import Decimal

from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from apps.core.jobs import model_work_queue
from apps.core.models import Job
from apps.core.scoping import team_object_or_404, team_scoped
from apps.costs.models import ZERO, EndpointKind, ModelEndpoint, UsageRecord
from apps.costs.pricing import money
from apps.rag.models import Pipeline, QueryOrigin, QueryRun, QueryStatus, Retriever


def pipeline_list(*, team) -> QuerySet[Pipeline]:
    return team_scoped(Pipeline, team).select_related("model_endpoint").prefetch_related("corpora")


def pipeline_get(*, team, pipeline_id: int) -> Pipeline:
    return team_object_or_404(pipeline_list(team=team), team, pk=pipeline_id)


def pipeline_by_name(*, team, name: str) -> Pipeline | None:
    return pipeline_list(team=team).filter(name=name).first()


# Compression methods that load a local model whatever the generator (surprisal needs local logits).
LOCAL_MODEL_COMPRESSION = frozenset({"surprisal_prune"})


def query_queue(*, endpoint: ModelEndpoint, pipeline: Pipeline | None = None) -> str:
    """The queue a query (a chat call, or a pipeline's question) runs on: ``io`` when its generator is a
    remote endpoint and nothing else in it needs a local model (a fixed context's KV cache, a local
    scorer); else ``gpu`` (``apps.core.jobs.model_work_queue``). Retrieval's one query embedding runs
    wherever the query does."""
    local_work = pipeline is not None and bool(
        pipeline.fixed_context or pipeline.fixed_context_corpus_id
        or pipeline.compression_method in LOCAL_MODEL_COMPRESSION
    )
    return model_work_queue(remote=endpoint.kind != EndpointKind.LOCAL, local_model_work=local_work)


def pipeline_prefill_job_latest(*, pipeline: Pipeline) -> Job | None:
    """The pipeline's newest fixed-context prefill job (the `attention.prefill` kind), if any."""
    from apps.rag.fixed_context import PREFILL_JOB_KIND

    return (
        team_scoped(Job, pipeline.team_id)
        .filter(kind=PREFILL_JOB_KIND, params__pipeline_id=pipeline.pk)
        .order_by("-id")
        .first()
    )


def query_run_list(*, team, user=None, pipeline=None, quality: str | None = None,
                   origin: str | None = QueryOrigin.ASK) -> QuerySet[QueryRun]:
    """The team's runs; ``quality``: only those with that label ("none": not assessed); ``origin``: only
    those asked that way — by default the questions people and clients asked, not evaluation or bulk
    job rows (None: all)."""
    runs = team_scoped(QueryRun, team).select_related(
        "pipeline", "endpoint", "user", "api_key", "cache_lookup__entry"
    )
    if origin is not None:
        runs = runs.filter(origin=origin)
    if quality:
        runs = runs.filter(quality_label="" if quality == "none" else quality)
    if user is not None:
        runs = runs.filter(user=user)
    if pipeline is not None:
        runs = runs.filter(pipeline=pipeline)
    return runs


def _retrievers_as_pairs(stored: dict | None) -> dict[str, tuple[int, float]]:
    """A stored citation's ``retrievers`` ({name: {"rank", "score"}}, docs/api.md; migration rag 0007
    converted the older [rank, score] pairs) as the engine's {name: (rank, score)}."""
    return {name: (where["rank"], where["score"]) for name, where in (stored or {}).items()}


def pipeline_best_hit_scores(*, pipeline: Pipeline, exclude_run_id: int | None = None, limit: int = 200) -> list[float]:
    """The best-hit scores (``workers.rag.quality.best_hit_score``) of the pipeline's latest finished runs
    that retrieved something: the reference its retrieval confidence is a percentile in."""
    from workers.rag.quality import best_hit_score

    runs = QueryRun.objects.filter(pipeline=pipeline, status=QueryStatus.SUCCEEDED).exclude(citations=[])
    if exclude_run_id is not None:
        runs = runs.exclude(pk=exclude_run_id)
    scores = []
    for citations in runs.order_by("-id").values_list("citations", flat=True)[:limit]:
        best = best_hit_score([(c.get("score", 0.0), _retrievers_as_pairs(c.get("retrievers")))
                               for c in citations])
        if best is not None:
            scores.append(best)
    return scores


def ledger_of_quality(records: QuerySet[UsageRecord], quality: str) -> QuerySet[UsageRecord]:
    """The ledger rows of query runs labelled ``quality``; "none": every other row (uploads, agents, direct
    calls, runs not assessed)."""
    if quality == "none":
        return records.exclude(query_run_id__in=QueryRun.objects.exclude(quality_label="").values("pk"))
    return records.filter(query_run_id__in=QueryRun.objects.filter(quality_label=quality).values("pk"))


def ledger_with_quality_label(records: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
    """Ledger rows annotated with ``quality_label``: their query run's ("" for other rows)."""
    label = QueryRun.objects.filter(pk=OuterRef("query_run_id")).values("quality_label")[:1]
    return records.annotate(quality_label=Coalesce(Subquery(label), Value("")))


def query_run_get(*, team, query_run_id: int) -> QueryRun:
    return team_object_or_404(query_run_list(team=team, origin=None), team, pk=query_run_id)


def query_run_stages(*, run: QueryRun) -> list[dict]:
    """Tokens and cost per stage of one run, from the ledger."""
    return query_run_stages_by_run(team=run.team_id, run_ids=[run.pk]).get(run.pk, [])


def query_run_stages_by_run(*, team, run_ids: list[int]) -> dict[int, list[dict]]:
    """``query_run_stages`` of several runs in one query (a list page), keyed by run id."""
    rows = (
        UsageRecord.objects.filter(team=team, query_run_id__in=run_ids)
        .values("query_run_id", "stage", "model_name")
        .annotate(
            calls=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cached_tokens=Sum("cached_tokens"),
            gpu_seconds=Sum("gpu_seconds"),
            cpu_seconds=Sum("cpu_seconds"),
            cost=Sum("cost"),
            latency_ms=Sum("latency_ms"),
        )
        .order_by("stage")
    )
    order = {"embed": 0, "retrieve": 1, "compress": 2, "generate": 3, "agent-step": 4, "tool": 5}
    by_run: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda row: order.get(row["stage"], 9)):
        by_run.setdefault(row.pop("query_run_id"), []).append(row)
    return by_run


def savings_by(*, team, since=None, until=None, field: str = "pipeline") -> list[dict]:
    """Baseline cost, actual cost and savings of finished query runs, grouped."""
    runs = team_scoped(QueryRun, team).filter(status="succeeded")
    if since:
        runs = runs.filter(created_at__gte=since)
    if until:
        runs = runs.filter(created_at__lt=until)
    columns = {"pipeline": "pipeline__name", "user": "user__username", "api_key": "api_key__name"}
    group = columns.get(field, field)
    rows = runs.values(group).annotate(
        runs=Count("id"), cost=Sum("cost"), baseline_cost=Sum("baseline_cost"), savings=Sum("savings")
    ).order_by(group)
    return [{"key": row.pop(group), **row} for row in rows]


def _accuracy_row(claimed: Decimal | None, measured: Decimal | None, runs: int) -> dict:
    # Sums quantized to the stored 10 places (SQLite sums come back with more).
    claimed, measured = money(claimed or ZERO), money(measured or ZERO)
    error = float(claimed / measured - 1) if measured else None
    return {"claimed_baseline_usd": claimed, "measured_baseline_usd": measured, "error": error, "runs": runs}


def _runs_with_shadow(team=None, since=None) -> QuerySet[QueryRun]:
    runs = QueryRun.objects.filter(status="succeeded", measured_baseline_cost__isnull=False)
    if team is not None:
        runs = team_scoped(runs, team)
    if since:
        runs = runs.filter(created_at__gte=since)
    return runs


def savings_accuracy(team=None, since=None) -> dict[str, dict]:
    """Claimed vs measured baseline per pipeline name, over the runs that have a shadow baseline.

    ``{pipeline_name: {"claimed_baseline_usd", "measured_baseline_usd" (Decimal sums), "error"
    (claimed / measured - 1, a float; None when nothing was measured), "runs"}}``; all teams when
    ``team`` is None (the benchmark, the operator)."""
    rows = (
        _runs_with_shadow(team, since)
        .values("pipeline__name")
        .annotate(runs=Count("id"), claimed=Sum("baseline_cost"), measured=Sum("measured_baseline_cost"))
        .order_by("pipeline__name")
    )
    return {
        row["pipeline__name"] or "": _accuracy_row(row["claimed"], row["measured"], row["runs"])
        for row in rows
    }


def savings_accuracy_overall(team=None, since=None) -> dict:
    """``savings_accuracy`` over every pipeline together (the same keys, one row)."""
    totals = _runs_with_shadow(team, since).aggregate(
        runs=Count("id"), claimed=Sum("baseline_cost"), measured=Sum("measured_baseline_cost")
    )
    return _accuracy_row(totals["claimed"], totals["measured"], totals["runs"])


def pipeline_option_names() -> dict[str, list[str]]:
    """The valid names of each pipeline option, from the engine's registries (sorted)."""
    from workers.compression import METHODS
    from workers.prompting import STRATEGIES

    attention = ["full"]
    try:
        from workers.attention import BACKENDS

        attention = sorted(BACKENDS)
    except ImportError:
        pass
    return {
        "compression_method": sorted(METHODS),
        "prompting_strategy": sorted(STRATEGIES),
        "attention_backend": attention,
        "retriever": list(Retriever.values),
    }


def _describe(cls) -> str:
    module_doc = getattr(sys.modules.get(cls.__module__), "__doc__", "")
    doc = getattr(cls, "description", None) or cls.__doc__ or module_doc
    return (doc or "").strip().split("\n")[0].strip()


def pipeline_option_choices() -> dict[str, list[tuple[str, str]]]:
    """Choices for the pipeline form: each method's name (as pipeline_validate knows them) with
    its own one-line description ("" when it has none)."""
    from workers.compression import METHODS
    from workers.prompting import STRATEGIES

    names = pipeline_option_names()
    described = {"compression_method": METHODS, "prompting_strategy": STRATEGIES}
    choices: dict[str, list[tuple[str, str]]] = {}
    for field in ("compression_method", "prompting_strategy", "attention_backend"):
        registry = described.get(field, {})
        choices[field] = [
            (name, _describe(registry[name]) if name in registry else "") for name in names[field]
        ]
    return choices
