"""Conversations: a follow-up's prompt carries the earlier turns within the pipeline's history budget."""

from __future__ import annotations

import pytest

from apps.conversations import selectors, services
from apps.costs.models import Stage, UsageRecord
from apps.costs.reconciliation import ledger_reconcile
from apps.rag.models import QueryRun
from workers.rag.history import history_fit, retrieval_query, with_history

pytestmark = pytest.mark.django_db(transaction=True)


def _words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_history_fit_keeps_the_newest_whole_turns_within_the_budget():
    history = [
        {"role": "user", "content": "one two three"}, {"role": "assistant", "content": "four five [1]"},
        {"role": "user", "content": "six seven"}, {"role": "assistant", "content": "eight"},
    ]
    fit = history_fit(history, budget=4, count=_words)
    assert fit.messages == history[2:] and fit.turns == 1 and fit.tokens == 3
    assert fit.dropped_turns == 1 and fit.dropped_tokens == 5  # the citation marker is not carried
    assert history_fit(history, budget=8, count=_words).turns == 2
    assert history_fit(history, budget=2, count=_words).messages == []  # a turn is never cut in half
    assert history_fit(history, budget=0, count=_words).dropped_turns == 2
    assert retrieval_query("and their size?", history) == "six seven\nand their size?"
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert with_history(prompt, history[2:]) == [prompt[0], *history[2:], prompt[1]]


def _generation(run: QueryRun) -> UsageRecord:
    return UsageRecord.objects.get(query_run_id=run.pk, stage=Stage.GENERATE)


def test_a_follow_up_carries_the_earlier_turn_and_retrieves_with_both_questions(team_a, alice, zoo_pipeline, sent):
    first = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="What are zebras?")
    first.refresh_from_db()
    assert first.status == "succeeded" and first.history == {}
    conversation = first.conversation
    assert conversation.title == "What are zebras?" and conversation.user == alice

    follow = services.conversation_ask(
        team=team_a, user=alice, pipeline=zoo_pipeline, question="Where do they live?", conversation=conversation
    )
    follow.refresh_from_db()
    assert follow.status == "succeeded" and follow.conversation == conversation
    prompt = sent[-1]
    assert {"role": "user", "content": "What are zebras?"} in prompt
    assert {"role": "assistant", "content": "Zebras have stripes"} in prompt
    assert prompt[-1]["role"] == "user" and "Where do they live?" in prompt[-1]["content"]
    assert follow.history["turns"] == 1 and follow.history["dropped_turns"] == 0 and follow.history["tokens"] > 0
    assert follow.history["retrieval_query"] == "What are zebras?\nWhere do they live?"
    # The history is read, and billed, as prompt: the same question alone reads fewer tokens.
    alone = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="Where do they live?")
    assert _generation(follow).prompt_tokens > _generation(alone).prompt_tokens
    assert selectors.conversation_cost(conversation=conversation) == first.cost + follow.cost > 0
    assert ledger_reconcile() == []


def test_history_over_the_budget_is_dropped_oldest_first_and_recorded(team_a, alice, zoo_pipeline, sent):
    from apps.costs.tokens import prompt_tokens_bound

    endpoint = zoo_pipeline.model_endpoint
    one_turn = prompt_tokens_bound(endpoint, [{"role": "user", "content": "Question number two?"},
                                              {"role": "assistant", "content": "Zebras have stripes"}])
    zoo_pipeline.history_token_budget = one_turn  # room for the newest turn only
    zoo_pipeline.save()
    run = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="Question number one?")
    conversation = run.conversation
    for question in ("Question number two?", "Question number three?"):
        run = services.conversation_ask(
            team=team_a, user=alice, pipeline=zoo_pipeline, question=question, conversation=conversation
        )
    run.refresh_from_db()
    contents = [m["content"] for m in sent[-1]]
    assert "Question number two?" in contents and "Question number one?" not in contents
    assert run.history["turns"] == 1 and run.history["dropped_turns"] == 1 and run.history["dropped_tokens"] > 0
    assert run.history["tokens"] <= run.history["budget"] == one_turn
    assert run.messages[-1] == {"role": "user", "content": "Question number three?"}
    assert run.cost == sum(r.cost for r in UsageRecord.objects.filter(query_run_id=run.pk)) > 0
    # A budget of 0: each question alone.
    zoo_pipeline.history_token_budget = 0
    zoo_pipeline.save()
    alone = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="And four?",
                                      conversation=conversation)
    alone.refresh_from_db()
    assert alone.history["turns"] == 0 and alone.history["dropped_turns"] == 3
    assert [m["role"] for m in sent[-1]].count("assistant") == 0


def test_a_regenerated_turn_replaces_the_old_one_in_the_history(team_a, alice, zoo_pipeline, sent):
    from apps.rag.services import pipeline_save

    other = pipeline_save(team=team_a, name="zoo-other", model_endpoint="smollm2-135m-instruct",
                          corpora=list(zoo_pipeline.corpora.all()), max_output_tokens=16)
    first = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="What are zebras?")
    first.refresh_from_db()
    again = services.query_run_regenerate(run=first, user=alice, pipeline=other)
    again.refresh_from_db()
    assert again.status == "succeeded" and again.pipeline == other and again.regenerated_from == first
    assert again.question == first.question and again.conversation == first.conversation
    history = selectors.conversation_history(conversation=first.conversation)
    assert history == [{"role": "user", "content": "What are zebras?"},
                       {"role": "assistant", "content": "Zebras have stripes"}]  # once, from the regeneration
    turns = list(selectors.conversation_turns(conversation=first.conversation))
    assert [t.pk for t in turns] == [first.pk, again.pk] and turns[0].regeneration_count == 1


def test_rename_and_delete_keep_the_turns_and_their_bill(team_a, alice, zoo_pipeline, sent):
    from apps.core.errors import ValidationFailed

    run = services.conversation_ask(team=team_a, user=alice, pipeline=zoo_pipeline, question="What are zebras?")
    conversation = services.conversation_rename(conversation=run.conversation, title="  Zebra  facts ")
    assert conversation.title == "Zebra facts"
    with pytest.raises(ValidationFailed):
        services.conversation_rename(conversation=conversation, title="   ")
    services.conversation_delete(conversation=conversation)
    run.refresh_from_db()
    assert run.conversation is None and run.cost > 0 and UsageRecord.objects.filter(query_run_id=run.pk).exists()
