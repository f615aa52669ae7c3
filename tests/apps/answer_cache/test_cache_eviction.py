"""Eviction in the database: a team's size limit, its policy by name, what leaves."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.answer_cache.models import AnswerCacheEntry, TeamCacheSettings
from apps.answer_cache.services import answer_cache_evict, answer_cache_settings_set
from apps.core.errors import ValidationFailed
from apps.rag.services import pipeline_save

pytestmark = pytest.mark.django_db


@pytest.fixture
def entries(team_a):
    """Three entries: an old expensive one, a recent cheap one, a middle one."""
    pipeline = pipeline_save(team=team_a, name="free", model_endpoint="smollm2-135m-instruct", retriever="none")
    now = timezone.now()
    made = {}
    for name, cost, age_s in (("expensive-old", "0.0500", 300), ("cheap-new", "0.0005", 10), ("mid", "0.0050", 100)):
        entry = AnswerCacheEntry.objects.create(
            team=team_a, pipeline=pipeline, key="k", question=name, question_hash=name, answer="a",
            cost=Decimal(cost), size=100,
        )
        AnswerCacheEntry.objects.filter(pk=entry.pk).update(
            created_at=now - timedelta(seconds=age_s), last_used_at=now - timedelta(seconds=age_s),
            priority=float(cost) / 100,  # GDSF's H at insertion with L = 0: cost / size
        )
        made[name] = entry
    return made


def _left() -> set[str]:
    return set(AnswerCacheEntry.objects.values_list("question", flat=True))


@pytest.mark.parametrize(("policy", "evicted"), [
    ("lru", "expensive-old"),  # the least recently used, whatever it cost
    ("gdsf", "cheap-new"),  # the lowest cost per byte
    ("lec", "cheap-new"),  # the least expected cost: rate × cost
])
def test_a_full_team_evicts_by_its_policy(team_a, entries, policy, evicted):
    answer_cache_settings_set(team=team_a, max_entries=2, policy=policy)
    assert _left() == set(entries) - {evicted}


def test_gdsf_moves_its_clock_to_the_victims_priority(team_a, entries):
    answer_cache_settings_set(team=team_a, max_entries=1, policy="gdsf")
    assert _left() == {"expensive-old"}
    assert TeamCacheSettings.objects.get(team=team_a).clock == pytest.approx(0.005 / 100)


def test_the_default_limit_applies_without_a_team_setting(team_a, entries, settings):
    settings.PARSIMONY_ANSWER_CACHE_MAX_ENTRIES = 3
    assert answer_cache_evict(team=team_a) == 0
    settings.PARSIMONY_ANSWER_CACHE_MAX_ENTRIES = 2
    assert answer_cache_evict(team=team_a) == 1 and len(_left()) == 2


def test_an_unknown_policy_or_limit_is_refused_naming_the_valid_ones(team_a):
    with pytest.raises(ValidationFailed, match=r"unknown eviction policy 'fifo' \(valid: lru, gdsf, lec\)"):
        answer_cache_settings_set(team=team_a, policy="fifo")
    with pytest.raises(ValidationFailed, match="at least 1"):
        answer_cache_settings_set(team=team_a, max_entries=0)
