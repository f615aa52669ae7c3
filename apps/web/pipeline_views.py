"""Pipelines: create and edit with a form that explains every option and its effect on cost (a cascade's
tiers included, with its scorer's provenance); start the prefill of a fixed context and follow its job (HTMX
polling, like ingestion)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.corpora import selectors as corpus_selectors
from apps.costs.metering import endpoints_available
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.rag.cascade import cascade_config_normalize
from apps.rag.fixed_context import fixed_context_prefill_start
from apps.rag.models import Pipeline
from apps.web.access import can, team_view
from apps.web.forms import PipelineForm, options_text

FORM_FIELDS = (
    "name", "description", "model_endpoint", "corpora", "retriever", "top_k", "compression_method",
    "compression_target", "prompting_strategy", "prompting_options", "attention_backend", "max_output_tokens",
    "history_token_budget", "system_prompt",
    "fixed_context", "fixed_context_corpus", "attention_options", "decoding_options", "abstain_below",
    "answer_cache",
)


@team_view()
def pipeline_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "web/pipelines.html",
        {"pipelines": rag_selectors.pipeline_list(team=request.team), "can_edit": can(request, Role.MEMBER)},
    )


def _form(request, data=None, initial=None, pipeline: Pipeline | None = None) -> PipelineForm:
    tiers = [p for p in rag_selectors.pipeline_list(team=request.team)
             if not p.is_cascade and (pipeline is None or p.pk != pipeline.pk)]
    return PipelineForm(
        data,
        initial=initial,
        endpoints=endpoints_available(team=request.team),
        corpora=corpus_selectors.corpus_list(team=request.team),
        registry=rag_selectors.pipeline_option_choices(),
        tiers=tiers,
    )


def _initial(pipeline: Pipeline | None) -> dict:
    if pipeline is None:
        defaults = {f.name: f.get_default() for f in Pipeline._meta.fields if f.name in FORM_FIELDS}
        return {**defaults, "model_endpoint": "smollm2-135m-instruct", "fixed_context_corpus": "",
                "attention_options": "", "prompting_options": "", "decoding_options": "", "cascade": []}
    own = ("model_endpoint", "corpora", "fixed_context_corpus", "attention_options", "prompting_options",
           "decoding_options")
    values = {name: getattr(pipeline, name) for name in FORM_FIELDS if name not in own}
    values["model_endpoint"] = pipeline.model_endpoint.name
    values["corpora"] = [str(pk) for pk in pipeline.corpora.values_list("pk", flat=True)]
    values["fixed_context_corpus"] = str(pipeline.fixed_context_corpus_id or "")
    values["attention_options"] = options_text(pipeline.attention_options)
    values["prompting_options"] = options_text(pipeline.prompting_options)
    values["decoding_options"] = options_text(pipeline.decoding_options)
    values["cascade"] = list((pipeline.cascade or {}).get("tiers", []))
    return values


def _cascade_config(request, pipeline: Pipeline | None, tiers: list[int]) -> tuple[dict, bool]:
    """The form's tiers as the pipeline's ``cascade`` ({} for none), checked by the cascade rules (an error
    goes on the field, ValidationFailed re-raised), and whether a scorer fit for other tiers is dropped."""
    if not tiers:
        return {}, False
    old = (pipeline.cascade or {}) if pipeline is not None else {}
    scorer = (old.get("scorer") or {}) if list(old.get("tiers") or []) == tiers else {}
    config = {"tiers": tiers, "scorer": scorer}
    cascade_config_normalize(team=request.team, pipeline=pipeline, config=config)
    return config, bool(old.get("scorer")) and not scorer


def _pipeline_values(request, form: PipelineForm) -> dict:
    """The form's options for pipeline_save, the fixed-context corpus resolved within the team."""
    values = form.values()
    corpus_id = values.pop("fixed_context_corpus", "")
    values["fixed_context_corpus"] = (
        corpus_selectors.corpus_list(team=request.team).filter(pk=corpus_id).first() if corpus_id else None
    )
    return values


def _cascade_context(pipeline: Pipeline | None) -> dict:
    """A cascade's scorer for the page: fitted or not, its thresholds, and its provenance when it was fit
    from an evaluation job."""
    if pipeline is None or not pipeline.is_cascade:
        return {}
    scorer = (pipeline.cascade or {}).get("scorer") or {}
    return {"scorer": scorer, "scorer_provenance": (scorer.get("objective") or {}).get("provenance")}


def _prefill_context(request, pipeline: Pipeline | None) -> dict:
    job = rag_selectors.pipeline_prefill_job_latest(pipeline=pipeline) if pipeline is not None else None
    return {"pipeline": pipeline, "prefill_job": job, "can_prefill": can(request, Role.ADMIN)}


def _edit(request: HttpRequest, pipeline: Pipeline | None) -> HttpResponse:
    status = 200
    if request.method == "POST":
        form = _form(request, request.POST, pipeline=pipeline)
        if form.is_valid():
            chosen = form.cleaned_data["corpora"] or []
            corpora = list(corpus_selectors.corpus_list(team=request.team).filter(pk__in=chosen))
            values = _pipeline_values(request, form)
            dropped = False
            try:
                try:
                    values["cascade"], dropped = _cascade_config(request, pipeline, values["cascade"])
                except ServiceError as exc:
                    form.add_error("cascade", exc.message)
                    raise
                saved = rag_services.pipeline_save(
                    team=request.team,
                    name=form.cleaned_data["name"],
                    model_endpoint=form.cleaned_data["model_endpoint"],
                    corpora=[] if values["cascade"] else corpora,
                    pipeline=pipeline,
                    created_by=request.user,
                    **values,
                )
            except ServiceError as exc:
                fields = (exc.detail or {}).get("fields") or {}
                for name, message in fields.items():
                    if name not in form.errors:
                        form.add_error(name if name in form.fields else None, message)
                if not fields and not form.errors:
                    form.add_error("name" if exc.code == "duplicate" else None, exc.message)
                status = exc.http_status
            else:
                note = (" Its tiers changed, so its scorer was removed: fit it again from an evaluation job that ran "
                        "every tier." if dropped else "")
                messages.success(request, f"Pipeline {saved.name} saved.{note}")
                return redirect("pipelines")
        else:
            status = 400
    else:
        form = _form(request, initial=_initial(pipeline), pipeline=pipeline)
    context = {"form": form, **_prefill_context(request, pipeline), **_cascade_context(pipeline)}
    return render(request, "web/pipeline_form.html", context, status=status)


@team_view(Role.MEMBER)
def pipeline_create(request: HttpRequest) -> HttpResponse:
    return _edit(request, None)


@team_view(Role.MEMBER)
def pipeline_edit(request: HttpRequest, pipeline_id: int) -> HttpResponse:
    return _edit(request, rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id))


@team_view(Role.ADMIN)
@require_POST
def pipeline_delete(request: HttpRequest, pipeline_id: int) -> HttpResponse:
    pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
    rag_services.pipeline_delete(pipeline=pipeline)
    messages.success(request, f"Pipeline {pipeline.name} deleted.")
    return redirect("pipelines")


@team_view(Role.ADMIN)
@require_POST
def pipeline_prefill(request: HttpRequest, pipeline_id: int) -> HttpResponse:
    """Start the `attention.prefill` job of the pipeline's fixed context (budget reserved first)."""
    pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
    try:
        job = fixed_context_prefill_start(pipeline=pipeline, user=request.user)
    except ServiceError as exc:
        messages.error(request, f"The fixed context was not prefilled: {exc.message}")
    else:
        messages.success(request, f"Prefill job #{job.pk} started: its progress shows below.")
    return redirect("pipeline-edit", pipeline_id=pipeline.pk)


@team_view(Role.MEMBER)
def pipeline_prefill_status(request: HttpRequest, pipeline_id: int) -> HttpResponse:
    """The prefill job's status alone: HTMX polls it while the job runs."""
    pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
    return render(request, "web/_prefill_status.html", _prefill_context(request, pipeline))
