"""The engine's quality step: one assessment after generation, and an abstention before it."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.workers.rag.test_pipeline import CHUNKS, FakeHooks, _run
from workers.rag.quality import ABSTAIN_ANSWER, Thresholds


@dataclass
class EmbeddingHooks(FakeHooks):
    """FakeHooks with the service's metered ``embed_for_quality`` hook; vectors make every text alike."""

    embedded: list[list[str]] = field(default_factory=list)

    def embed_for_quality(self, texts: list[str]) -> list[list[float]]:
        self.embedded.append(list(texts))
        return [[1.0, 0.0] for _ in texts]


def test_the_answer_is_assessed_after_generation_and_invalid_citations_removed():
    hooks = FakeHooks(reply="It was completed in 1889 [1][7].")
    result, _, pieces = _run(hooks)
    assert pieces == ["It was completed in 1889 [1][7]."]  # streamed as generated
    assert result.answer == "It was completed in 1889 [1]."
    assert result.quality["label"] == "grounded" and result.quality["citations_removed"] == 1
    assert result.quality["embedded"] is False  # no embed hook: token overlap alone
    assert [c["cited"] for c in result.citations] == [True, False]


def test_an_invented_answer_is_unsupported():
    result, _, _ = _run(FakeHooks(reply="John Smith, the company's CEO, decided it."))
    assert result.quality["label"] == "unsupported" and result.quality["support"] == 0.0


def test_the_embed_hook_gets_the_sentences_and_the_passages_once():
    hooks = EmbeddingHooks(reply="It was completed in 1889 [1].")
    result, _, _ = _run(hooks)
    assert hooks.embedded == [["It was completed in 1889.", CHUNKS[0].text, CHUNKS[1].text]]
    assert result.quality["embedded"] is True and result.quality["sentences"][0]["score"] == 1.0


def test_calibrated_thresholds_from_the_config_are_used():
    result, _, _ = _run(FakeHooks(reply="It was completed in 1889 [1]."),
                        quality_thresholds=Thresholds(sentence=1.01, grounded=0.75, weak=0.25))
    assert result.quality["label"] == "unsupported"


def test_a_pipeline_abstains_below_its_confidence_without_generating():
    hooks = FakeHooks()
    # The best hit (dense 0.912) is below every earlier run's best: percentile 0.
    result, _, _ = _run(hooks, retrieval_reference=(0.95, 0.96, 0.97, 0.98, 0.99), abstain_below=0.1)
    assert hooks.names() == ["retrieve"]
    assert (result.answer, result.finish_reason) == (ABSTAIN_ANSWER, "abstained")
    assert result.quality["label"] == "abstained" and result.quality["retrieval_confidence"] == 0.0
    assert len(result.citations) == 2 and not any(c["cited"] for c in result.citations)


def test_a_confident_retrieval_answers_and_reports_its_confidence():
    hooks = FakeHooks()
    result, _, _ = _run(hooks, retrieval_reference=(0.1, 0.2, 0.3, 0.4, 0.95), abstain_below=0.1)
    assert "generate" in hooks.names()
    assert result.quality["retrieval_confidence"] == 0.8 and result.quality["label"] == "grounded"


def test_without_history_the_pipeline_never_abstains():
    hooks = FakeHooks()
    result, _, _ = _run(hooks, retrieval_reference=(), abstain_below=0.99)
    assert "generate" in hooks.names() and result.quality["retrieval_confidence"] is None
