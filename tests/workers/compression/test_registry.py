"""Methods by name, and the wiring a RAG pipeline uses."""

from __future__ import annotations

import pytest

from workers.compression import METHODS, get_method, pipeline_method
from workers.runtime.meter import EchoTarget


def test_it_registers_every_method_by_name():
    assert set(METHODS) == {"none", "extractive", "summarize", "semantic_prune", "surprisal_prune"}
    for name in METHODS:
        assert get_method(name).name == name


def test_it_lists_the_valid_names_for_an_unknown_one():
    with pytest.raises(ValueError, match="unknown compression method 'zip' .valid: extractive, none, semantic_prune"):
        get_method("zip")
    with pytest.raises(ValueError, match="unknown compression method"):
        pipeline_method("zip")


def test_it_passes_method_parameters_and_rejects_unknown_ones():
    assert get_method("surprisal_prune", granularity="token").granularity == "token"
    with pytest.raises(TypeError):
        get_method("extractive", bogus=1)


def test_it_wires_the_pipeline_model_and_one_shared_cache(tmp_path):
    target = EchoTarget(name="pipeline-model")
    first = pipeline_method("summarize", target=target, cache_dir=tmp_path / "c", model_cache_dir=tmp_path)
    second = pipeline_method("semantic_prune", target=target, cache_dir=tmp_path / "c")
    assert first.resources.generator is target
    assert first.resources.cache is second.resources.cache
    assert first.resources.model_cache_dir == tmp_path
    assert pipeline_method("none", target=target).name == "none"
