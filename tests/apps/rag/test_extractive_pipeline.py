"""An extractive pipeline answers by quoting a passage: one metered embedding, no generation, a saving."""

from __future__ import annotations

import pytest

from apps.core.errors import ValidationFailed
from apps.costs import metering
from apps.costs.baseline import naive_generation_estimate
from apps.costs.models import Reservation, Stage, UsageRecord
from apps.costs.pricing import money
from apps.costs.services import price_current
from apps.costs.tokens import embedding_tokens, prompt_tokens_bound, text_tokens_bound
from apps.rag.services import pipeline_save, query_run_execute, query_run_start
from tests.apps.rag.conftest import fake_search_hits
from workers.prompting import Passage, get_strategy

PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the "
                     "World's Fair. It was designed by the company of Gustave Eiffel."),
    ("Paris", "Paris is the capital and most populous city of France. It hosted the Olympics in 1900 and 1924."),
]
QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture
def no_generator(monkeypatch, settings, tmp_path):
    """Retrieval returns PASSAGES; loading the endpoint's model fails the test."""
    settings.DATA_ROOT = tmp_path

    def refuse(endpoint):
        raise AssertionError("an extractive answer must not load the generator")

    monkeypatch.setattr(metering, "_target_override", refuse)
    return fake_search_hits(monkeypatch, PASSAGES)


def _pipeline(team, name: str = "quotes", **values):
    from apps.corpora.services import corpus_create

    corpus = corpus_create(team=team, name=f"facts-{name}")
    return pipeline_save(team=team, name=name, model_endpoint="smollm2-135m-instruct", corpora=[corpus],
                         prompting_strategy="extractive_answer", **values)


def test_it_answers_with_a_cited_sentence_billing_the_embedding_and_no_generation(team_a, alice, no_generator):
    pipeline = _pipeline(team_a)
    started = query_run_start(team=team_a, user=alice, pipeline=pipeline, question=QUESTION)
    run = query_run_execute(query_run_id=started.pk)
    assert run.status == "succeeded", run.error
    assert run.answer == "It was completed in 1889 for the World's Fair. [1]"
    assert run.finish_reason == "extractive"
    assert [(c["n"], c["cited"]) for c in run.citations] == [(1, True), (2, False)]
    rows = UsageRecord.objects.filter(query_run_id=run.pk)
    assert sorted(rows.values_list("stage", flat=True)) == [Stage.EMBED, Stage.RETRIEVE]
    embed = rows.get(stage=Stage.EMBED)
    # Exactly the texts the strategy encodes: the question and every sentence with its title, billed as MiniLM.
    passages = [Passage(100 + n, title, text) for n, (title, text) in enumerate(PASSAGES)]
    texts = get_strategy("extractive_answer").embedding_inputs(QUESTION, passages)
    assert embed.model_name == "local/all-minilm-l6-v2"
    assert embed.prompt_tokens == embedding_tokens("all-MiniLM-L6-v2", texts) and embed.completion_tokens == 0
    assert embed.cpu_seconds + embed.gpu_seconds > 0 and embed.cost > 0
    assert run.prompt_tokens == run.completion_tokens == 0  # nothing generated
    assert run.cost == sum(r.cost for r in rows)
    # The claim: naive RAG on the same model over the same passages, an estimate (the output length is assumed).
    assert run.baseline_kind == "estimate" and run.baseline_cost > run.cost and run.savings > 0
    endpoint = pipeline.model_endpoint
    naive = get_strategy("naive").build_messages(system_prompt="", question=QUESTION, passages=passages)
    generation, _ = naive_generation_estimate(
        price=price_current(model_name=endpoint.price_name), prompt_tokens=prompt_tokens_bound(endpoint, naive),
        completion_tokens=min(text_tokens_bound(endpoint, run.answer), pipeline.max_output_tokens),
        model=endpoint.price_name, local=True)
    assert generation > 0
    assert run.baseline_cost == money(rows.get(stage=Stage.RETRIEVE).cost + generation)
    assert run.savings == run.baseline_cost - run.cost
    reservation = Reservation.objects.get(pk=run.reservation_id)
    assert reservation.status == "settled" and reservation.actual == run.cost


def test_an_extractive_pipeline_refuses_what_it_cannot_quote(team_a):
    with pytest.raises(ValidationFailed, match="set compression to none"):
        _pipeline(team_a, compression_method="extractive", compression_target=0.5)
    with pytest.raises(ValidationFailed, match="sentences must be an integer from 1 to 5"):
        _pipeline(team_a, "b", prompting_options={"sentences": 9})
    with pytest.raises(ValidationFailed, match="pick a retriever"):
        pipeline_save(team=team_a, name="c", model_endpoint="smollm2-135m-instruct", retriever="none",
                      prompting_strategy="extractive_answer")
    # A pipeline that compresses already cannot switch to quoting without turning compression off.
    pipeline = pipeline_save(team=team_a, name="squeezed", model_endpoint="smollm2-135m-instruct",
                             corpora=list(_pipeline(team_a, "d").corpora.all()), compression_method="extractive",
                             compression_target=0.5)
    with pytest.raises(ValidationFailed, match="set compression to none"):
        pipeline_save(team=team_a, pipeline=pipeline, name=pipeline.name, model_endpoint=pipeline.model_endpoint,
                      prompting_strategy="extractive_answer")
