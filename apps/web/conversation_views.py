"""The Ask page's conversations: a thread per user (list, rename, delete), follow-ups, Stop and Regenerate."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.conversations import selectors as conversation_selectors
from apps.conversations import services as conversation_services
from apps.core.errors import ServiceError
from apps.costs.services import BudgetExceeded
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.web.access import can, team_view
from apps.web.forms import AskForm


def _thread_context(request, conversation, *, form=None) -> dict:
    pipelines = rag_selectors.pipeline_list(team=request.team)
    turns = list(conversation_selectors.conversation_turns(conversation=conversation))
    last = next((t for t in reversed(turns) if t.pipeline_id), None)
    if form is None:
        form = AskForm(pipelines=pipelines, initial={"pipeline": last.pipeline_id if last else None})
    return {
        "conversation": conversation,
        "turns": turns,
        "total": conversation_selectors.conversation_cost(conversation=conversation),
        "form": form,
        "pipelines": pipelines,
        "can_ask": can(request, Role.MEMBER),
    }


@team_view()
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_selectors.conversation_get(
        team=request.team, user=request.user, conversation_id=conversation_id
    )
    return render(request, "web/conversation.html", _thread_context(request, conversation))


@team_view(Role.MEMBER)
@require_POST
def conversation_ask(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """A follow-up question: the next turn, with the conversation's history within the pipeline's budget."""
    conversation = conversation_selectors.conversation_get(
        team=request.team, user=request.user, conversation_id=conversation_id
    )
    form = AskForm(request.POST, pipelines=rag_selectors.pipeline_list(team=request.team))
    context = _thread_context(request, conversation, form=form)
    if not form.is_valid():
        return render(request, "web/conversation.html", context, status=400)
    try:
        run = conversation_services.conversation_ask(
            team=request.team, user=request.user, pipeline=form.cleaned_data["pipeline"],
            question=form.cleaned_data["question"], conversation=conversation,
        )
    except BudgetExceeded as exc:
        return render(request, "web/conversation.html", {**context, "refusal": exc}, status=402)
    except ServiceError as exc:
        return render(request, "web/conversation.html", {**context, "error": exc.message}, status=exc.http_status)
    return redirect("query-run", run_id=run.pk)


@team_view()
@require_POST
def conversation_rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_selectors.conversation_get(
        team=request.team, user=request.user, conversation_id=conversation_id
    )
    try:
        conversation_services.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect(request.POST.get("next") or "conversation", **({} if request.POST.get("next") else {
        "conversation_id": conversation.pk}))


@team_view()
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_selectors.conversation_get(
        team=request.team, user=request.user, conversation_id=conversation_id
    )
    title = conversation.title
    conversation_services.conversation_delete(conversation=conversation)
    messages.success(request, f"Conversation “{title}” deleted (its questions stay in the team's history).")
    return redirect("ask")


@team_view(Role.MEMBER)
@require_POST
def query_run_stop(request: HttpRequest, run_id: int) -> HttpResponse:
    """Stop: the worker stops before its next token; what was generated is billed, the hold settled."""
    run = rag_selectors.query_run_get(team=request.team, query_run_id=run_id)
    # A moment for the worker to stop and bill what it generated, so the page shows the final numbers.
    rag_services.query_run_cancel(run=run, wait_s=5)
    if request.htmx:
        from apps.web.ask_views import query_run_live

        return query_run_live(request, run_id=run.pk)
    return redirect("query-run", run_id=run.pk)


@team_view(Role.MEMBER)
@require_POST
def query_run_regenerate(request: HttpRequest, run_id: int) -> HttpResponse:
    """Ask a finished turn's question again, with the same or another pipeline (a new turn replacing it)."""
    run = rag_selectors.query_run_get(team=request.team, query_run_id=run_id)
    pipeline = None
    if request.POST.get("pipeline"):
        pipeline = rag_selectors.pipeline_list(team=request.team).filter(pk=request.POST["pipeline"]).first()
        if pipeline is None:
            messages.error(request, "No such pipeline.")
            return redirect("query-run", run_id=run.pk)
    try:
        new = conversation_services.query_run_regenerate(run=run, user=request.user, pipeline=pipeline)
    except BudgetExceeded as exc:
        messages.error(request, f"Not regenerated: {exc.message}.")
        return redirect("query-run", run_id=run.pk)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("query-run", run_id=run.pk)
    return redirect("query-run", run_id=new.pk)
