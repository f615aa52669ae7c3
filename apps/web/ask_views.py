"""Ask: pick a pipeline, ask; the answer streams in; citations, a cost panel, the team's history."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django_htmx.http import HttpResponseStopPolling

from apps.accounts.models import Role
from apps.answer_cache.selectors import cache_info
from apps.conversations import selectors as conversation_selectors
from apps.conversations import services as conversation_services
from apps.core.errors import ServiceError
from apps.costs.services import BudgetExceeded
from apps.rag import selectors as rag_selectors
from apps.web.access import can, team_view
from apps.web.forms import AskForm

HISTORY = 50


def _ask_page(request, *, form=None, refusal=None, error="", status=200) -> HttpResponse:
    pipelines = rag_selectors.pipeline_list(team=request.team)
    if form is None:
        initial = {}
        if "pipeline" in request.GET:
            initial["pipeline"] = request.GET["pipeline"]
        elif (first := pipelines.first()) is not None:
            initial["pipeline"] = first.pk  # the default (the demo's naive pipeline sorts first)
        form = AskForm(pipelines=pipelines, initial=initial)
    context = {
        "form": form,
        "pipelines": pipelines,
        "history": rag_selectors.query_run_list(team=request.team)[:HISTORY],
        "conversations": conversation_selectors.conversation_list(team=request.team, user=request.user)[:HISTORY],
        "can_ask": can(request, Role.MEMBER),
        "can_edit_pipelines": can(request, Role.MEMBER),
        "refusal": refusal,
        "error": error,
    }
    return render(request, "web/ask.html", context, status=status)


@team_view()
def ask(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _ask_page(request)
    if not can(request, Role.MEMBER):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied("viewers cannot ask: a question spends the team's budget")
    form = AskForm(request.POST, pipelines=rag_selectors.pipeline_list(team=request.team))
    if not form.is_valid():
        return _ask_page(request, form=form, status=400)
    try:
        # A question asked here starts a conversation (the run page continues it).
        run = conversation_services.conversation_ask(
            team=request.team,
            pipeline=form.cleaned_data["pipeline"],
            question=form.cleaned_data["question"],
            user=request.user,
        )
    except BudgetExceeded as exc:
        return _ask_page(request, form=form, refusal=exc, status=402)
    except ServiceError as exc:
        return _ask_page(request, form=form, error=exc.message, status=exc.http_status)
    return redirect("query-run", run_id=run.pk)


def _run_context(run) -> dict:
    stages = rag_selectors.query_run_stages(run=run) if run.is_finished else []
    totals = {
        key: sum((row[key] or 0) for row in stages)
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "calls")
    }
    job = run.job
    return {
        "run": run,
        "can_stop": not run.is_finished,
        # Regenerate offers the team's pipelines once the answer is done.
        "pipelines": rag_selectors.pipeline_list(team=run.team_id) if run.is_finished else [],
        "stages": stages,
        "stage_totals": totals,
        "job": job,
        "cited": [c for c in run.citations if c.get("cited")],
        "cache": cache_info(run=run),
    }


@team_view()
def query_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = rag_selectors.query_run_get(team=request.team, query_run_id=run_id)
    pipelines = rag_selectors.pipeline_list(team=request.team)
    form = AskForm(pipelines=pipelines, initial={"pipeline": run.pipeline_id})
    conversation = None
    if run.conversation_id and run.conversation.user_id == request.user.pk:
        conversation = run.conversation
    thread = {}
    if conversation is not None:
        thread = {
            "conversation": conversation,
            "earlier_turns": list(conversation_selectors.conversation_turns(conversation=conversation)
                                  .filter(created_at__lt=run.created_at)),
            "total": conversation_selectors.conversation_cost(conversation=conversation),
        }
    return render(
        request,
        "web/query_run.html",
        {**_run_context(run), **thread, "form": form, "can_ask": can(request, Role.MEMBER), "pipelines": pipelines},
    )


@team_view()
def query_run_live(request: HttpRequest, run_id: int) -> HttpResponse:
    """The growing answer (polled every ~300 ms); once finished, the final panel and HTTP 286,
    which tells HTMX to stop polling."""
    run = rag_selectors.query_run_get(team=request.team, query_run_id=run_id)
    response = render(request, "web/_run_live.html", _run_context(run))
    if run.is_finished and request.htmx:
        stop = HttpResponseStopPolling(response.content)
        return stop
    return response
