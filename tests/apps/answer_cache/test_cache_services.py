"""The answer cache in the query path, against PostgreSQL, real embeddings and real corpus indexes."""

from __future__ import annotations

import pytest

from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, CacheOutcome
from apps.costs.models import ReservationStatus, Stage, UsageRecord
from apps.rag.models import QueryRun, QueryStatus
from apps.rag.services import pipeline_save, query_run_start
from tests.apps.answer_cache.conftest import REPLY, make_corpus_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"


def _ask(team, pipeline, question, **kwargs) -> QueryRun:
    run = query_run_start(team=team, pipeline=pipeline, question=question, **kwargs)
    run.refresh_from_db()
    return run


def _outcome(run) -> str | None:
    return AnswerCacheLookup.objects.filter(query_run=run).values_list("outcome", flat=True).first()


def _trusted(entry: AnswerCacheEntry, n: int = 200) -> None:
    """Give the entry a history of verified same-intent hits at lower similarity (its threshold learned)."""
    entry.observations = [[0.80, True, False]] * n
    entry.save(update_fields=["observations"])


def test_it_answers_the_same_question_again_from_the_cache_at_no_model_cost(team_a, geo):
    _corpus, pipeline, _docs = geo
    first = _ask(team_a, pipeline, QUESTION)
    assert first.status == QueryStatus.SUCCEEDED and first.answer == REPLY.replace(" [1]", " [1]")
    assert _outcome(first) == CacheOutcome.MISS
    entry = AnswerCacheEntry.objects.get()
    assert entry.source_run_id == first.pk and entry.cost == first.cost > 0

    again = _ask(team_a, pipeline, "  what is the capital of france ")
    assert _outcome(again) == CacheOutcome.HIT_EXACT
    assert again.status == QueryStatus.SUCCEEDED and again.job_id is None
    assert again.answer == first.answer and again.citations == first.citations
    assert again.quality_label == first.quality_label
    # An exact hit runs no model: nothing billed, the hold given back, the saving the whole naive baseline.
    assert not UsageRecord.objects.filter(query_run_id=again.pk).exists()
    assert again.cost == 0 and again.reservation.status == ReservationStatus.RELEASED
    assert again.baseline_cost == first.baseline_cost and again.savings == again.baseline_cost
    lookup = AnswerCacheLookup.objects.get(query_run=again)
    assert lookup.saved == first.cost
    entry.refresh_from_db()
    assert entry.hits == 1


def test_a_fresh_entry_does_not_serve_a_paraphrase_but_learns_from_the_fresh_answer(team_a, geo):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, QUESTION)
    entry = AnswerCacheEntry.objects.get()
    second = _ask(team_a, pipeline, PARAPHRASE)
    lookup = AnswerCacheLookup.objects.get(query_run=second)
    # Conservative start: no evidence yet, so the bound is above δ and the pipeline answers.
    assert lookup.outcome == CacheOutcome.MISS and lookup.entry_id == entry.pk and lookup.rejected == ""
    assert lookup.error_bound > 0.05 and lookup.similarity >= 0.8
    entry.refresh_from_db()
    # The fresh answer agrees with the cached one: a correct observation at that similarity.
    assert entry.observations == [[round(lookup.similarity, 6), True, False]]


def test_a_verified_paraphrase_is_served_and_billed_its_embedding(team_a, geo):
    _corpus, pipeline, _docs = geo
    first = _ask(team_a, pipeline, QUESTION)
    entry = AnswerCacheEntry.objects.get()
    _trusted(entry)
    hit = _ask(team_a, pipeline, PARAPHRASE)
    lookup = AnswerCacheLookup.objects.get(query_run=hit)
    assert lookup.outcome == CacheOutcome.HIT_SEMANTIC, lookup.rejected
    assert hit.status == QueryStatus.SUCCEEDED and hit.answer == first.answer and hit.job_id is None
    rows = list(UsageRecord.objects.filter(query_run_id=hit.pk))
    assert [(r.stage, r.finish_reason) for r in rows] == [(Stage.EMBED, "answer_cache")]
    assert hit.cost == rows[0].cost > 0
    assert hit.reservation.status == ReservationStatus.SETTLED and hit.reservation.actual == hit.cost
    # The same baseline as every other saving (the naive pipeline's cost), an estimate for another question.
    assert hit.baseline_cost == first.baseline_cost and hit.baseline_kind == "estimate"
    assert hit.savings == hit.baseline_cost - hit.cost
    assert lookup.saved == first.cost - hit.cost


@pytest.mark.parametrize("negative", [
    "What is the capital of Germany?",  # another name
    "What is not the capital of France?",  # negation
])
def test_a_hard_negative_is_rejected_by_verification_and_counted(team_a, geo, negative):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, QUESTION)
    entry = AnswerCacheEntry.objects.get(question=QUESTION)
    _trusted(entry)
    run = _ask(team_a, pipeline, negative)
    lookup = AnswerCacheLookup.objects.get(query_run=run)
    if lookup.entry_id is None:  # not even near: a plain miss
        assert lookup.similarity is None or lookup.similarity < 0.8
        return
    assert lookup.outcome == CacheOutcome.MISS and lookup.rejected, lookup.similarity
    entry.refresh_from_db()
    assert entry.observations[-1][1:] == [False, True]  # an error the verification caught
    assert run.job_id is not None


def test_numbers_that_differ_are_rejected_even_at_high_similarity(team_a, geo):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, "How many inhabitants did Paris have in 1999?")
    _trusted(AnswerCacheEntry.objects.get())
    run = _ask(team_a, pipeline, "How many inhabitants did Paris have in 2001?")
    lookup = AnswerCacheLookup.objects.get(query_run=run)
    assert lookup.similarity > 0.9 and lookup.outcome == CacheOutcome.MISS
    assert "numbers differ" in lookup.rejected


def test_teams_never_share_entries(team_a, team_b, geo):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, QUESTION)
    _ask(team_a, pipeline, QUESTION)
    _other_corpus, other, _ = make_corpus_pipeline(team_b)
    run = _ask(team_b, other, QUESTION)
    assert _outcome(run) == CacheOutcome.MISS
    assert not AnswerCacheLookup.objects.filter(team=team_b, outcome__startswith="hit").exists()
    assert AnswerCacheEntry.objects.filter(team=team_b).count() == 1
    assert all(e.team_id == e.pipeline.team_id for e in AnswerCacheEntry.objects.select_related("pipeline"))


def test_deleting_a_cited_document_invalidates_its_entries(team_a, geo):
    from apps.corpora.services import document_delete

    _corpus, pipeline, docs = geo
    _ask(team_a, pipeline, QUESTION)
    entry = AnswerCacheEntry.objects.get()
    cited = {c["document_id"] for c in entry.citations if c["cited"]}
    assert cited == {docs["paris.txt"].pk}
    document_delete(document=docs["paris.txt"])
    run = _ask(team_a, pipeline, QUESTION)
    assert _outcome(run) == CacheOutcome.MISS and run.job_id is not None


def test_replacing_a_cited_document_invalidates_its_entries(team_a, geo):
    from apps.corpora.services import documents_ingest

    _corpus, pipeline, docs = geo
    _ask(team_a, pipeline, QUESTION)
    entry = AnswerCacheEntry.objects.get()
    from apps.corpora.models import Document

    # Ingested again in the same document, as a re-upload does: its chunks replaced (new rows, new vector ids).
    Document.objects.filter(pk=docs["paris.txt"].pk).update(status="queued")
    docs["paris.txt"].refresh_from_db()
    documents_ingest(documents=[docs["paris.txt"]])
    assert not _entry_chunks_exist(entry)
    run = _ask(team_a, pipeline, QUESTION)
    assert _outcome(run) == CacheOutcome.MISS


def _entry_chunks_exist(entry) -> bool:
    from apps.corpora.models import Chunk

    return Chunk.objects.filter(vector_id__in=entry.cited_chunk_ids).count() == len(entry.cited_chunk_ids)


def test_a_pipeline_or_a_request_can_opt_out(team_a, geo):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, QUESTION)
    bypassed = _ask(team_a, pipeline, QUESTION, cache=False)
    assert _outcome(bypassed) == CacheOutcome.BYPASS and bypassed.job_id is not None
    assert not UsageRecord.objects.filter(query_run_id=bypassed.pk, finish_reason="answer_cache").exists()
    pipeline = pipeline_save(team=team_a, name=pipeline.name, model_endpoint=pipeline.model_endpoint,
                             pipeline=pipeline, answer_cache=False)
    off = _ask(team_a, pipeline, QUESTION)
    assert _outcome(off) == CacheOutcome.BYPASS
    assert AnswerCacheEntry.objects.count() == 1  # bypassed runs store nothing


def test_changing_an_answer_setting_is_another_key(team_a, geo):
    _corpus, pipeline, _docs = geo
    _ask(team_a, pipeline, QUESTION)
    pipeline = pipeline_save(team=team_a, name=pipeline.name, model_endpoint=pipeline.model_endpoint,
                             pipeline=pipeline, top_k=3)
    assert _outcome(_ask(team_a, pipeline, QUESTION)) == CacheOutcome.MISS


def test_abstained_and_degenerate_answers_are_not_stored(team_a, geo):
    from apps.answer_cache.services import answer_cache_store

    _corpus, pipeline, _docs = geo
    run = _ask(team_a, pipeline, QUESTION, cache=None)
    AnswerCacheEntry.objects.all().delete()
    for label in ("abstained", "degenerate"):
        AnswerCacheLookup.objects.filter(query_run=run).update(stored=False)
        QueryRun.objects.filter(pk=run.pk).update(quality_label=label)
        run.refresh_from_db()
        assert answer_cache_store(run=run) is None
    assert not AnswerCacheEntry.objects.exists()


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"history": [{"role": "user", "content": "Tell me about Europe."},
                     {"role": "assistant", "content": "Europe is a continent."}]},
        {"decoding": {"temperature": 0.7}},
    ],
    ids=["follow-up", "own-decoding"],
)
def test_a_follow_up_or_a_request_with_its_own_decoding_neither_reads_nor_fills_the_cache(
    team_a, geo, request_kwargs
):
    _corpus, pipeline, _docs = geo
    first = _ask(team_a, pipeline, QUESTION)
    assert _outcome(first) == CacheOutcome.MISS and AnswerCacheEntry.objects.count() == 1
    again = _ask(team_a, pipeline, QUESTION, **request_kwargs)
    # Its answer depends on the history or on other decoding: the pipeline answers, nothing is stored.
    assert _outcome(again) == CacheOutcome.BYPASS and again.job_id is not None
    assert again.status == QueryStatus.SUCCEEDED and AnswerCacheEntry.objects.count() == 1
