"""Evaluations: upload or pick a labelled set, run it through several pipelines, read the result page
(accuracy, cost, cost-of-pass, p50 latency, the accuracy/cost chart with its frontier), download it."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.costs.services import BudgetExceeded
from apps.evaluations import selectors as eval_selectors
from apps.evaluations import services as eval_services
from apps.rag import selectors as rag_selectors
from apps.web.access import can, team_view

RUNS_SHOWN = 30


class EvalSetUploadForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="Default: the file's name.")
    file = forms.FileField(help_text=".csv (question, answer[, id]; several answers split by |) or .jsonl / .json "
                           "(question, answers[, id]).")


class EvalRunForm(forms.Form):
    eval_set = forms.ModelChoiceField(queryset=None, empty_label=None, label="Question set")
    pipelines = forms.ModelMultipleChoiceField(queryset=None, widget=forms.CheckboxSelectMultiple,
                                               help_text="Every question runs through each (at most 8).")

    def __init__(self, *args, team, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["eval_set"].queryset = eval_selectors.eval_set_list(team=team)
        self.fields["pipelines"].queryset = rag_selectors.pipeline_list(team=team)


def _page(request, *, upload=None, run_form=None, refusal=None, error="", status=200) -> HttpResponse:
    context = {
        "sets": eval_selectors.eval_set_list(team=request.team),
        "shipped": eval_selectors.eval_shipped_list(),
        "runs": eval_selectors.eval_run_list(team=request.team)[:RUNS_SHOWN],
        "upload": upload or EvalSetUploadForm(),
        "run_form": run_form or EvalRunForm(team=request.team),
        "can_run": can(request, Role.MEMBER),
        "refusal": refusal,
        "error": error,
    }
    return render(request, "evaluations/evaluations.html", context, status=status)


@team_view()
def evaluations(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _page(request)
    if not can(request, Role.MEMBER):
        raise PermissionDenied("viewers cannot run evaluations: they spend the team's budget")
    action = request.POST.get("action")
    try:
        if action == "upload":
            upload = EvalSetUploadForm(request.POST, request.FILES)
            if not upload.is_valid():
                return _page(request, upload=upload, status=400)
            file = upload.cleaned_data["file"]
            eval_set = eval_services.eval_set_upload(team=request.team, name=upload.cleaned_data["name"],
                                                     filename=file.name, data=file.read(), user=request.user)
            messages.success(request, f"Set '{eval_set.name}' uploaded: {eval_set.size} questions.")
            return redirect("evaluations")
        if action == "shipped":
            eval_set = eval_services.eval_set_from_shipped(team=request.team, shipped=request.POST.get("shipped", ""),
                                                           user=request.user)
            messages.success(request, f"Set '{eval_set.name}' is ready: {eval_set.size} questions.")
            return redirect("evaluations")
        run_form = EvalRunForm(request.POST, team=request.team)
        if not run_form.is_valid():
            return _page(request, run_form=run_form, status=400)
        run = eval_services.eval_run_start(
            team=request.team, eval_set=run_form.cleaned_data["eval_set"],
            pipelines=list(run_form.cleaned_data["pipelines"]), user=request.user,
        )
    except BudgetExceeded as exc:
        return _page(request, refusal=exc, status=402)
    except ServiceError as exc:
        return _page(request, error=exc.message, status=exc.http_status)
    return redirect("evaluation", eval_run_id=run.pk)


def _run_context(run) -> dict:
    summary = eval_selectors.eval_run_summary(eval_run=run)
    return {
        "run": run,
        "job": run.job,
        "summary": summary,
        "chart": eval_selectors.eval_chart(summary=summary),
    }


@team_view()
def evaluation(request: HttpRequest, eval_run_id: int) -> HttpResponse:
    run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
    template = "evaluations/_result.html" if request.htmx else "evaluations/evaluation.html"
    return render(request, template, _run_context(run))


@team_view()
def evaluation_download(request: HttpRequest, eval_run_id: int, kind: str) -> HttpResponse:
    run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
    content, content_type, name = eval_selectors.eval_run_download(eval_run=run, kind=kind)
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
