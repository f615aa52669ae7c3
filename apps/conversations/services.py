"""Writes for conversations: start one with a first question, ask a follow-up, regenerate a turn, rename, delete.

A turn is a QueryRun with ``conversation`` set; a follow-up hands ``apps.rag.services.query_run_start`` the
conversation's history (``selectors.conversation_history``), which it fits to the pipeline's
``history_token_budget``. Regenerating asks a turn's question again (the same or another pipeline) as a new
turn that replaces the old one in the history the next follow-up reads; both stay on the page, and both
are billed.
"""

from __future__ import annotations

from django.db import transaction

from apps.conversations.models import Conversation
from apps.conversations.selectors import conversation_history
from apps.core.errors import ValidationFailed
from apps.rag.models import Pipeline, QueryRun
from apps.rag.services import query_run_start

TITLE_MAX = 200
TITLE_FROM_QUESTION = 80  # a new conversation is titled by its first question, cut here


def _title_checked(title: str) -> str:
    title = " ".join((title or "").split())
    if not title:
        raise ValidationFailed("a conversation's title cannot be empty")
    if len(title) > TITLE_MAX:
        raise ValidationFailed(f"a conversation's title has at most {TITLE_MAX} characters")
    return title


def conversation_create(*, team, user, title: str) -> Conversation:
    return Conversation.objects.create(team=team, user=user, title=_title_checked(title))


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    conversation.title = _title_checked(title)
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """The thread goes; its turns stay in the team's history and the ledger (they were billed)."""
    conversation.delete()


@transaction.atomic
def conversation_ask(
    *, team, user, pipeline: Pipeline, question: str, conversation: Conversation | None = None, api_key=None
) -> QueryRun:
    """Ask ``question`` as the next turn of ``conversation`` (None: a new conversation titled by it)."""
    question = (question or "").strip()
    if not question:
        raise ValidationFailed("the question is empty")
    if conversation is None:
        title = question.splitlines()[0]
        if len(title) > TITLE_FROM_QUESTION:
            title = title[: TITLE_FROM_QUESTION - 1].rstrip() + "…"
        conversation = conversation_create(team=team, user=user, title=title)
        history: list[dict] = []
    else:
        history = conversation_history(conversation=conversation)
    run = query_run_start(
        team=team, pipeline=pipeline, question=question, user=user, api_key=api_key,
        history=history, conversation=conversation,
    )
    conversation.save(update_fields=["updated_at"])
    return run


@transaction.atomic
def query_run_regenerate(*, run: QueryRun, user, pipeline: Pipeline | None = None) -> QueryRun:
    """Ask a finished turn's question again, with ``pipeline`` (None: the same one), over the history the
    turn had; the new turn replaces the old one in the conversation's history (both stay listed)."""
    if not run.is_finished:
        raise ValidationFailed("the answer is still being written: stop it before regenerating")
    pipeline = pipeline or run.pipeline
    if pipeline is None:
        raise ValidationFailed("only a pipeline's answer can be regenerated here")
    if run.conversation_id is not None:
        history = conversation_history(conversation=run.conversation, before=run)
    else:
        history = list(run.messages[:-1]) if run.pipeline_id else []
    new = query_run_start(
        team=run.team, pipeline=pipeline, question=run.question, user=user, history=history,
        conversation=run.conversation, regenerated_from=run,
    )
    if run.conversation_id is not None:
        run.conversation.save(update_fields=["updated_at"])
    return new
