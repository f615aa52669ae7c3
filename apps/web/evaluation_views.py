"""Evaluations: upload or pick a labelled set, run it through several pipelines, read the result page
(accuracy, cost, cost-of-pass, p50 latency, the accuracy/cost chart with its frontier), download it, and fit
the scorer of a cascade whose tiers all ran in it."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.costs.money_format import usd
from apps.costs.services import BudgetExceeded
from apps.evaluations import selectors as eval_selectors
from apps.evaluations import services as eval_services
from apps.evaluations.cascade_fit import OBJECTIVES, cascade_scorer_fit_from_evaluation
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


class CascadeFitForm(forms.Form):
    objective = forms.ChoiceField(
        choices=[(name, name.replace("_", " ").capitalize()) for name in OBJECTIVES],
        help_text="Accuracy floor: the cheapest thresholds whose accuracy (contained) reaches the value, a share "
        "0–1. Cost target: the most accurate thresholds whose mean cost per question stays within the value, "
        "in dollars.",
    )
    value = forms.CharField(
        max_length=40, required=False,
        help_text="e.g. 0.8 for an accuracy floor (blank: the last tier's accuracy here), 0.0001 for a cost target",
    )

    def __init__(self, *args, pipeline_id: int, **kwargs):
        kwargs.setdefault("auto_id", f"id_fit{pipeline_id}_%s")
        super().__init__(*args, **kwargs)


def _run_context(request, run, fit_forms: dict | None = None) -> dict:
    summary = eval_selectors.eval_run_summary(eval_run=run)
    cascades = eval_selectors.eval_run_cascades(eval_run=run) if run.is_finished else []
    for cascade in cascades:
        pk = cascade["pipeline"].pk
        cascade["form"] = (fit_forms or {}).get(pk) or CascadeFitForm(
            pipeline_id=pk, initial={"objective": "accuracy_floor"})
    return {
        "run": run,
        "job": run.job,
        "summary": summary,
        "chart": eval_selectors.eval_chart(summary=summary),
        "cascades": cascades,
        "can_fit": can(request, Role.MEMBER),
    }


@team_view()
def evaluation(request: HttpRequest, eval_run_id: int) -> HttpResponse:
    run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
    template = "evaluations/_result.html" if request.htmx else "evaluations/evaluation.html"
    return render(request, template, _run_context(request, run))


@team_view(Role.MEMBER)
@require_POST
def evaluation_cascade_fit(request: HttpRequest, eval_run_id: int) -> HttpResponse:
    """Fit a cascade's scorer from this job's rows (in the request: a few regressions on its rows); the page
    then shows the summary under that cascade's form."""
    run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
    pipeline_id = request.POST.get("pipeline", "")
    if not pipeline_id.isdigit():
        raise Http404("no such pipeline")
    pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=int(pipeline_id))
    form = CascadeFitForm(request.POST, pipeline_id=pipeline.pk)
    if form.is_valid():
        try:
            summary = cascade_scorer_fit_from_evaluation(
                pipeline=pipeline, evaluation=run, objective=form.cleaned_data["objective"],
                value=form.cleaned_data["value"].strip() or None, user=request.user,
            )
        except ServiceError as exc:
            field = next(iter((exc.detail or {}).get("fields") or {}), None)
            form.add_error(field if field in form.fields else None, exc.message)
            status = exc.http_status
        else:
            cascade = summary["cascade"]
            messages.success(request, f"Scorer of {pipeline.name} fit on {summary['questions']} questions: "
                             f"{cascade['accuracy']:.0%} contained at {usd(cascade['cost_per_question'])} "
                             "per question.")
            return redirect(f"{reverse('evaluation', args=[run.pk])}#fit-{pipeline.pk}")
    else:
        status = 400
    context = _run_context(request, run, fit_forms={pipeline.pk: form})
    return render(request, "evaluations/evaluation.html", context, status=status)


@team_view()
def evaluation_download(request: HttpRequest, eval_run_id: int, kind: str) -> HttpResponse:
    run = eval_selectors.eval_run_get(team=request.team, eval_run_id=eval_run_id)
    content, content_type, name = eval_selectors.eval_run_download(eval_run=run, kind=kind)
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
