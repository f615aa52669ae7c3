"""Ask › Compare: one question through two pipelines side by side, each with its answer and cost panel.

A page of its own (the Ask page links to it): both questions are reserved and started together (a
budget that cannot cover both refuses both), then each answer streams into its column as on the
question page (``web/_run_live.html``)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.costs.services import BudgetExceeded
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.web.access import can, team_view


class CompareForm(forms.Form):
    first = forms.ModelChoiceField(queryset=None, empty_label=None, label="Pipeline A")
    second = forms.ModelChoiceField(queryset=None, empty_label=None, label="Pipeline B")
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000, label="Your question")

    def __init__(self, *args, pipelines, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["first"].queryset = pipelines
        self.fields["second"].queryset = pipelines

    def clean(self):
        values = super().clean()
        if values.get("first") is not None and values.get("first") == values.get("second"):
            raise forms.ValidationError("choose two different pipelines")
        return values


def _run_id(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _column(request, run) -> dict:
    from apps.web.ask_views import _run_context

    return _run_context(run)


@team_view()
def compare(request: HttpRequest) -> HttpResponse:
    pipelines = rag_selectors.pipeline_list(team=request.team)
    refusal, error, status = None, "", 200
    if request.method == "POST":
        if not can(request, Role.MEMBER):
            raise PermissionDenied("viewers cannot ask: a question spends the team's budget")
        form = CompareForm(request.POST, pipelines=pipelines)
        if form.is_valid():
            values = form.cleaned_data
            try:
                with transaction.atomic():  # both reserved and started, or neither
                    first = rag_services.query_run_start(team=request.team, pipeline=values["first"],
                                                         question=values["question"], user=request.user)
                    second = rag_services.query_run_start(team=request.team, pipeline=values["second"],
                                                          question=values["question"], user=request.user)
                return redirect(f"{reverse('ask-compare')}?a={first.pk}&b={second.pk}")
            except BudgetExceeded as exc:
                refusal, status = exc, 402
            except ServiceError as exc:
                error, status = exc.message, exc.http_status
        else:
            status = 400
    else:
        initial = {}
        ordered = list(pipelines[:2])
        if len(ordered) == 2:
            initial = {"first": ordered[0].pk, "second": ordered[1].pk}
        form = CompareForm(pipelines=pipelines, initial=initial)
    columns = []
    ids = [_run_id(request.GET.get("a")), _run_id(request.GET.get("b"))]
    if request.method != "POST" and all(ids):
        runs = [rag_selectors.query_run_get(team=request.team, query_run_id=run_id) for run_id in ids]
        columns = [{"label": label, **_column(request, run)} for label, run in zip(("A", "B"), runs, strict=True)]
        form = CompareForm(pipelines=pipelines, initial={
            "first": runs[0].pipeline_id, "second": runs[1].pipeline_id, "question": runs[0].question})
    context = {
        "form": form, "pipelines": pipelines, "columns": columns, "can_ask": can(request, Role.MEMBER),
        "refusal": refusal, "error": error,
    }
    return render(request, "web/ask_compare.html", context, status=status)
