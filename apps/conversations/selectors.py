"""Reads for conversations: a user's threads, their turns, the history a follow-up carries, their cost."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Count, QuerySet
from django.http import Http404

from apps.conversations.models import Conversation
from apps.core.scoping import team_scoped
from apps.costs.models import UsageRecord
from apps.rag.models import QueryRun, QueryStatus


def conversation_list(*, team, user) -> QuerySet[Conversation]:
    """The user's conversations in the team, newest activity first, with their number of turns."""
    return team_scoped(Conversation, team).filter(user=user).annotate(turn_count=Count("turns"))


def conversation_get(*, team, user, conversation_id: int) -> Conversation:
    """One of the user's conversations (404 for anyone else's, or another team's)."""
    conversation = conversation_list(team=team, user=user).filter(pk=conversation_id).first()
    if conversation is None:
        raise Http404("no such conversation")
    return conversation


def conversation_turns(*, conversation: Conversation) -> QuerySet[QueryRun]:
    """The conversation's turns, oldest first (a regenerated turn and its regeneration both)."""
    return (
        QueryRun.objects.filter(conversation=conversation)
        .select_related("pipeline", "endpoint", "user")
        .annotate(regeneration_count=Count("regenerations"))
        .order_by("created_at", "id")
    )


def conversation_history(*, conversation: Conversation, before: QueryRun | None = None) -> list[dict]:
    """The user and assistant messages a follow-up carries (oldest first): every answered turn, but a turn
    that was regenerated (its regeneration stands for it) and turns that failed or were cancelled.
    ``before``: only the turns asked before that one (regenerating it)."""
    turns = QueryRun.objects.filter(
        conversation=conversation, status=QueryStatus.SUCCEEDED, regenerations__isnull=True
    )
    if before is not None:
        turns = turns.filter(created_at__lt=before.created_at).exclude(pk=before.pk)
        if before.regenerated_from_id:
            turns = turns.exclude(pk=before.regenerated_from_id)
    messages: list[dict] = []
    for question, answer in turns.order_by("created_at", "id").values_list("question", "answer"):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def conversation_cost(*, conversation: Conversation) -> Decimal:
    """What the conversation has cost so far: every ledger row of its turns (running ones included)."""
    turns = QueryRun.objects.filter(conversation=conversation).values("pk")
    return UsageRecord.objects.filter(query_run_id__in=turns).total_cost()
