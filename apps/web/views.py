"""Browser views: thin — the active team comes from the session, data through selectors."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from apps.accounts.middleware import SESSION_KEY
from apps.accounts.selectors import user_teams
from apps.core import selectors as job_selectors
from apps.core import services as job_services
from apps.core.scoping import id_from_ref


@login_required
def home(request: HttpRequest) -> HttpResponse:
    from apps.corpora.selectors import corpus_list
    from apps.costs.selectors import spend_per_day
    from apps.rag.selectors import pipeline_list, query_run_list

    jobs = job_selectors.job_list(team=request.team)[:10]
    context = {"jobs": jobs}
    if request.team is not None:
        week = spend_per_day(team=request.team, days=7)
        context.update(
            corpora=corpus_list(team=request.team).count(),
            pipelines=pipeline_list(team=request.team).count(),
            recent=query_run_list(team=request.team)[:5],
            spent_week=sum((cost for _, cost in week), start=0),
        )
    return render(request, "web/home.html", context)


@login_required
@require_POST
def team_switch(request: HttpRequest) -> HttpResponse:
    team_id = id_from_ref(request.POST.get("team_id", ""))
    team = user_teams(user=request.user).filter(pk=team_id).first() if team_id is not None else None
    if team is None:
        messages.error(request, "You are not a member of that team.")
    else:
        request.session[SESSION_KEY] = team.pk
        messages.success(request, f"Now working in {team.name}.")
    return redirect(safe_next(request, request.POST.get("next")))


def safe_next(request: HttpRequest, target: str | None, default: str = "home") -> str:
    """``target`` when it is a page of this site (a relative URL, or this host over this request's
    scheme), else the ``default`` page: a ``next`` from a form never sends anyone off-site."""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return resolve_url(default)


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = job_selectors.job_list(team=request.team)[:50]
    template = "web/_job_rows.html" if request.htmx else "web/jobs.html"
    return render(request, template, {"jobs": jobs})


@login_required
@require_POST
def worker_probe(request: HttpRequest) -> HttpResponse:
    """Send a probe job to a queue's workers: the quickest way to see a worker is alive."""
    queue = request.POST.get("queue") if request.POST.get("queue") in ("gpu", "io") else "cpu"
    if request.membership is None or not request.membership.has_role("member"):
        messages.error(request, "Viewers cannot start jobs.")
        return redirect("jobs")
    job_services.job_start(kind=f"diagnostics.probe_{queue}", team=request.team, created_by=request.user)
    messages.success(request, f"Probe sent to the {queue} queue.")
    return redirect("jobs")


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness + database reachability, for load balancers and the compose health check."""
    from django.db import connection
    from django.http import JsonResponse

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # report, don't raise: a health check must answer
        return JsonResponse({"status": "error", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "database": connection.vendor})
