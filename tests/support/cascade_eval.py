"""A cascade of two tiers and a finished evaluation job whose rows are written directly (no model runs):
the labelled rows a cascade scorer is fit on (tests of apps.evaluations.cascade_fit, its page and REST)."""

from __future__ import annotations

from decimal import Decimal

from django.utils import timezone

from apps.evaluations.models import EvalRow, EvalRun, EvalSet

QUOTES_COST = Decimal("0.000001")
BIG_COST = Decimal("0.00001")


def quotes_right(q: int) -> bool:
    """The cheap tier is wrong on every third question (and says so: unsupported, low support)."""
    return q % 3 != 0


def cascade_with_tiers(team, name: str = "cheap-first"):
    """Two tier pipelines (``quotes``, ``big``) of ``team`` and the cascade over them, cheapest first."""
    from apps.corpora.services import corpus_create
    from apps.rag.services import pipeline_save

    corpus = corpus_create(team=team, name=f"facts-{team.pk}")
    common = dict(model_endpoint="smollm2-135m-instruct", corpora=[corpus], top_k=2)
    quotes = pipeline_save(team=team, name="quotes", prompting_strategy="extractive_answer", **common)
    big = pipeline_save(team=team, name="big", max_output_tokens=16, **common)
    cascade = pipeline_save(team=team, name=name, model_endpoint="smollm2-135m-instruct",
                            cascade={"tiers": [quotes.pk, big.pk]})
    return cascade, quotes, big


def evaluation_with_rows(team, tiers, *, questions: int = 20, status: str = "succeeded", right=quotes_right):
    """A finished evaluation job of ``questions`` questions through ``tiers`` (pipelines): the first tier's
    answers right as ``right(q)`` says, with matching quality signals; every later tier always right."""
    items = [{"id": f"q{q}", "question": f"question {q}?", "answers": [f"gold {q}"]} for q in range(questions)]
    eval_set = EvalSet.objects.create(team=team, name=f"set-{EvalSet.objects.count()}", items=items)
    run = EvalRun.objects.create(team=team, eval_set=eval_set, pipeline_names=[t.name for t in tiers],
                                 status=status, finished_at=timezone.now() if status == "succeeded" else None)
    run.pipelines.set(tiers)
    for index, tier in enumerate(tiers):
        for q, item in enumerate(items):
            ok = right(q) if index == 0 else True
            quality = {"label": "grounded" if ok else "unsupported", "support": 1.0 if ok else 0.0,
                       "support_score": 0.8 if ok else 0.1, "retrieval_confidence": 0.6, "citations_removed": 0}
            EvalRow.objects.create(
                run=run, pipeline=tier, pipeline_name=tier.name, item_id=item["id"], position=q,
                question=item["question"], gold=item["answers"], answer=f"gold {q}" if ok else "something else",
                status="succeeded", contained=1.0 if ok else 0.0, f1=1.0 if ok else 0.0, exact_match=0.0,
                cost=QUOTES_COST if index == 0 else BIG_COST, latency_ms=100, quality_label=quality["label"],
                quality=quality, finished_at=timezone.now(),
            )
    return run
