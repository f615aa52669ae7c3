"""Helpers the REST views share: find by name or id."""

from __future__ import annotations

import pytest

from apps.api.shortcuts import find_by_name_or_id
from apps.core.errors import ValidationFailed
from apps.rag.models import Pipeline


def test_it_finds_by_name_then_by_id_and_lists_the_names_when_unknown(empty_pipeline, team_a):
    pipelines = Pipeline.objects.filter(team=team_a)
    assert find_by_name_or_id(pipelines, "plain", noun="pipeline") == empty_pipeline
    assert find_by_name_or_id(pipelines, str(empty_pipeline.pk), noun="pipeline") == empty_pipeline
    with pytest.raises(ValidationFailed) as raised:
        find_by_name_or_id(pipelines, "nope", noun="pipeline")
    assert raised.value.code == "unknown_pipeline"
    assert raised.value.message == "unknown pipeline 'nope' (available: plain)"


def test_an_empty_list_reads_none(team_b, db):
    with pytest.raises(ValidationFailed, match=r"unknown pipeline '1' \(available: none\)"):
        find_by_name_or_id(Pipeline.objects.filter(team=team_b), "1", noun="pipeline")
