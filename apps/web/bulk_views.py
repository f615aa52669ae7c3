"""Bulk question jobs in the team UI: upload a CSV/JSONL of questions against a pipeline, follow the job,
download the results."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.bulk import selectors as bulk_selectors
from apps.bulk import services as bulk_services
from apps.bulk.models import BulkJob, BulkMode
from apps.core.errors import ServiceError
from apps.core.scoping import team_object_or_404
from apps.rag.models import Pipeline
from apps.web.access import can, team_view


class BulkUploadForm(forms.Form):
    pipeline = forms.ModelChoiceField(queryset=Pipeline.objects.none(), help_text="The pipeline that answers")
    file = forms.FileField(help_text="A .csv with a 'question' column (optional 'id' and 'gold'), or a .jsonl of "
                                     "objects with 'question'")
    batch_size = forms.IntegerField(
        min_value=1, max_value=16, initial=1, label="Questions per prompt (k)",
        help_text="More than 1 packs k questions into one prompt (naive pipelines without compression only); "
                  "answers that do not parse are asked again alone",
    )

    mode = forms.ChoiceField(
        choices=BulkMode.choices, initial=BulkMode.DIRECT, required=False, label="Run",
        help_text="A provider batch (remote endpoints that offer the Batch API) is answered within 24 hours at the "
                  "provider's batch prices; questions are sent one per request",
    )

    def __init__(self, *args, team=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pipeline"].queryset = Pipeline.objects.filter(team=team).order_by("name")


def _page(request: HttpRequest, form: BulkUploadForm, status: int = 200) -> HttpResponse:
    return render(request, "web/bulk.html", {
        "jobs": bulk_selectors.bulk_jobs_for_team(team=request.team)[:50],
        "form": form, "can_run": can(request, Role.MEMBER),
    }, status=status)


@team_view(Role.VIEWER)
def bulk_list(request: HttpRequest) -> HttpResponse:
    return _page(request, BulkUploadForm(team=request.team))


@team_view(Role.MEMBER)
@require_POST
def bulk_create(request: HttpRequest) -> HttpResponse:
    form = BulkUploadForm(request.POST, request.FILES, team=request.team)
    if not form.is_valid():
        return _page(request, form, status=400)
    upload = form.cleaned_data["file"]
    try:
        bulk = bulk_services.bulk_job_start(
            team=request.team, pipeline=form.cleaned_data["pipeline"], data=upload.read(),
            filename=upload.name or "", batch_size=form.cleaned_data["batch_size"], user=request.user,
            mode=form.cleaned_data["mode"] or BulkMode.DIRECT,
        )
    except ServiceError as exc:  # bad input or a budget that cannot cover the job: nothing stored
        fields = (exc.detail or {}).get("fields") or {}
        form.add_error("mode" if "mode" in fields else None, exc.message)
        return _page(request, form, status=exc.http_status)
    messages.success(request, f"Bulk job #{bulk.pk} queued: {bulk.rows_total} questions.")
    return redirect("bulk-detail", bulk_job_id=bulk.pk)


@team_view(Role.VIEWER)
def bulk_detail(request: HttpRequest, bulk_job_id: int) -> HttpResponse:
    bulk = team_object_or_404(BulkJob, request.team, pk=bulk_job_id)  # another team's: 404, as a missing one
    return render(request, "web/bulk_detail.html", {
        "bulk": bulk, "rows": bulk_selectors.bulk_result_records(bulk=bulk)[:200],
    })


@team_view(Role.VIEWER)
def bulk_download(request: HttpRequest, bulk_job_id: int, file_format: str) -> HttpResponse:
    bulk = team_object_or_404(BulkJob, request.team, pk=bulk_job_id)
    content, content_type, name = bulk_selectors.bulk_result_file(bulk=bulk, file_format=file_format)
    response = HttpResponse(content, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
