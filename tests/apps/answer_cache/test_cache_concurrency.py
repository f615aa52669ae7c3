"""Two misses of the same question finishing together store one cache entry (PostgreSQL, real threads and
connections): the unique team + key + question hash, and ``answer_cache_store`` returning the first."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection

from apps.answer_cache import services
from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, CacheOutcome
from apps.rag.models import QueryRun, QueryStatus
from apps.rag.services import pipeline_save
from workers.rag.answer_cache import question_hash

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the capital of France?"


def _missed_run(team, pipeline, key: str) -> QueryRun:
    run = QueryRun.objects.create(team=team, pipeline=pipeline, question=QUESTION, status=QueryStatus.SUCCEEDED,
                                  answer="Paris.", finish_reason="stop", max_output_tokens=16)
    AnswerCacheLookup.objects.create(team=team, query_run=run, outcome=CacheOutcome.MISS, key=key)
    return run


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
def test_concurrent_identical_misses_store_one_entry(team_a, monkeypatch):
    pipeline = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", corpora=[],
                             retriever="none", max_output_tokens=16)
    key = services.answer_cache_key(pipeline=pipeline, max_output_tokens=16)
    runs = [_missed_run(team_a, pipeline, key) for _ in range(4)]
    # Every thread passes its checks before any inserts: the race the constraint closes.
    barrier = threading.Barrier(len(runs), timeout=30)
    settings_of = services._team_settings
    waited = threading.local()

    def team_settings_then_wait(team):  # (eviction reads the settings again: wait the first time only)
        found = settings_of(team)
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return found

    monkeypatch.setattr(services, "_team_settings", team_settings_then_wait)
    stored: dict[int, int] = {}
    errors: list[BaseException] = []

    def store(run: QueryRun) -> None:
        try:
            entry = services.answer_cache_store(run=QueryRun.objects.get(pk=run.pk))
            stored[run.pk] = entry.pk
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=store, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    entries = list(AnswerCacheEntry.objects.filter(team=team_a))
    assert len(entries) == 1
    assert set(stored.values()) == {entries[0].pk} and len(stored) == len(runs)
    assert entries[0].source_run_id in {run.pk for run in runs}
    assert AnswerCacheLookup.objects.filter(stored=True).count() == len(runs)


def test_the_database_refuses_a_second_entry_for_the_same_question(team_a):
    pipeline = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", corpora=[],
                             retriever="none", max_output_tokens=16)
    values = {"team": team_a, "pipeline": pipeline, "key": "k" * 64, "question": QUESTION,
              "question_hash": question_hash(QUESTION), "answer": "Paris."}
    AnswerCacheEntry.objects.create(**values)
    with pytest.raises(IntegrityError):
        AnswerCacheEntry.objects.create(**values)


def test_the_migration_keeps_the_first_of_entries_stored_twice(team_a):
    import importlib

    from django.apps import apps
    from django.db import connection

    migration = importlib.import_module("apps.answer_cache.migrations.0002_answer_cache_entry_drop_duplicates")
    pipeline = pipeline_save(team=team_a, name="plain", model_endpoint="smollm2-135m-instruct", corpora=[],
                             retriever="none", max_output_tokens=16)
    constraint = AnswerCacheEntry._meta.constraints[0]
    with connection.schema_editor() as editor:  # as before the constraint (put back at the end)
        editor.remove_constraint(AnswerCacheEntry, constraint)
    try:
        values = {"team": team_a, "pipeline": pipeline, "key": "k" * 64, "question": QUESTION,
                  "question_hash": question_hash(QUESTION)}
        first, _second, _third = (AnswerCacheEntry.objects.create(answer=a, **values) for a in ("one", "two", "three"))
        other = AnswerCacheEntry.objects.create(answer="other", **{**values, "question_hash": "h" * 64})
        migration.drop_duplicates(apps, None)
        assert set(AnswerCacheEntry.objects.values_list("pk", flat=True)) == {first.pk, other.pk}
    finally:
        AnswerCacheEntry.objects.filter(team=team_a).delete()
        with connection.schema_editor() as editor:
            editor.add_constraint(AnswerCacheEntry, constraint)
