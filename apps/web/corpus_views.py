"""Corpora: list, create, upload (several files, drag and drop), live ingestion progress, search."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.corpora import selectors as corpus_selectors
from apps.corpora import services as corpus_services
from apps.web import selectors as web_selectors
from apps.web.access import can, team_view
from apps.web.forms import CorpusForm, SearchForm, UploadForm

RECORD_EXTENSIONS = (".jsonl", ".csv")


def _list_page(request, form=None, status=200) -> HttpResponse:
    return render(
        request,
        "web/corpora.html",
        {
            "corpora": web_selectors.corpus_list_with_counts(team=request.team),
            "form": form or CorpusForm(),
            "can_edit": can(request, Role.MEMBER),
        },
        status=status,
    )


@team_view()
def corpus_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


@team_view(Role.MEMBER)
@require_POST
def corpus_create(request: HttpRequest) -> HttpResponse:
    form = CorpusForm(request.POST)
    if not form.is_valid():
        return _list_page(request, form, status=400)
    try:
        corpus = corpus_services.corpus_create(team=request.team, user=request.user, **form.cleaned_data)
    except ServiceError as exc:
        form.add_error(None, exc.message)
        return _list_page(request, form, status=exc.http_status)
    messages.success(request, f"Corpus {corpus.name} created: now add documents.")
    return redirect("corpus-detail", corpus_id=corpus.pk)


def _rows_context(corpus) -> dict:
    rows = web_selectors.document_rows(corpus=corpus)
    return {"corpus": corpus, "rows": rows, "active": any(row.active for row in rows)}


@team_view()
def corpus_detail(request: HttpRequest, corpus_id: int) -> HttpResponse:
    corpus = corpus_selectors.corpus_get(team=request.team, corpus_id=corpus_id)
    search_form = SearchForm(request.GET or None)
    hits, search_error, status = None, "", 200
    if search_form.is_bound and search_form.is_valid():
        try:
            hits = corpus_services.corpus_search(
                corpora=corpus,
                query=search_form.cleaned_data["q"],
                retriever=search_form.cleaned_data.get("retriever") or "hybrid",
                k=10,
                path="search_ui",
                user=request.user,
            )
        except ServiceError as exc:
            search_error, status = exc.message, exc.http_status
    context = {
        **_rows_context(corpus),
        "upload_form": UploadForm(),
        "search_form": search_form,
        "hits": hits,
        "search_error": search_error,
        "query": search_form.cleaned_data.get("q", "") if search_form.is_bound and search_form.is_valid() else "",
        "can_edit": can(request, Role.MEMBER),
        "can_delete": can(request, Role.ADMIN),
        "max_upload_mb": _max_upload_mb(),
    }
    return render(request, "web/corpus_detail.html", context, status=status)


def _max_upload_mb() -> int:
    from django.conf import settings

    return max(1, settings.PARSIMONY_MAX_UPLOAD_BYTES // 1_000_000)


@team_view()
def corpus_documents(request: HttpRequest, corpus_id: int) -> HttpResponse:
    """The documents table alone: HTMX polls it while anything is ingesting."""
    corpus = corpus_selectors.corpus_get(team=request.team, corpus_id=corpus_id)
    context = {**_rows_context(corpus), "can_edit": can(request, Role.MEMBER)}
    return render(request, "web/_documents.html", context)


def _upload_summary(*, queued: int, duplicates: int, failed: int) -> str:
    """One sentence on what a drop of files did ("" when it did none of these)."""
    parts = []
    if queued:
        parts.append(f"{queued} file(s) uploaded and queued for ingestion")
    if duplicates:
        parts.append(f"{duplicates} already in the corpus")
    if failed:
        parts.append(f"{failed} refused (see the error in the table)")
    return "; ".join(parts) + "." if parts else ""


@team_view(Role.MEMBER)
@require_POST
def corpus_upload(request: HttpRequest, corpus_id: int) -> HttpResponse:
    corpus = corpus_selectors.corpus_get(team=request.team, corpus_id=corpus_id)
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Choose at least one file to upload.")
        return redirect("corpus-detail", corpus_id=corpus.pk)
    started = timezone.now()
    files = [(upload.name or "upload", upload.read()) for upload in form.cleaned_data["files"]]
    # One hold for the drop's files (records files reserve their own), before anything is stored.
    try:
        hold = corpus_services.ingest_hold_open(
            corpus=corpus,
            texts=[
                corpus_services.upload_text(filename=name, data=data)
                for name, data in files
                if not name.lower().endswith(RECORD_EXTENSIONS)
            ],
            user=request.user,
        )
    except ServiceError as exc:  # a budget refused it: nothing was stored
        messages.error(request, exc.message)
        response = corpus_detail(request, corpus_id=corpus.pk)
        response.status_code = exc.http_status
        return response
    try:
        queued, failed, duplicates, errors = _store_drop(request, corpus, files, started)
    except BaseException:
        hold.release()
        raise
    # One ingestion job for the whole drop: one progress bar, one model load (no job: the hold is released).
    corpus_services.documents_ingest_start(documents=queued, user=request.user, hold=hold)
    summary = _upload_summary(queued=len(queued), duplicates=duplicates, failed=failed)
    if summary:
        messages.success(request, summary)
    for error in errors:
        messages.error(request, error)
    return redirect("corpus-detail", corpus_id=corpus.pk)


def _store_drop(request, corpus, files: list[tuple[str, bytes]], started) -> tuple[list, int, int, list[str]]:
    """Store a drop's files: (documents queued, failed count, duplicates count, error messages)."""
    queued, failed, duplicates, errors = [], 0, 0, []
    for name, data in files:
        try:
            if name.lower().endswith(RECORD_EXTENSIONS):
                created = corpus_services.documents_import_records(
                    corpus=corpus, filename=name, data=data, user=request.user
                )
                messages.info(request, f"{name}: {len(created)} record(s) imported.")
                continue
            document = corpus_services.document_upload(
                corpus=corpus, filename=name, data=data, user=request.user, start_job=False
            )
        except ServiceError as exc:
            errors.append(exc.message)
            continue
        if document.status == "failed":
            failed += 1
        elif document.created_at >= started and document.status == "queued":
            if document not in queued:  # the same file twice in one drop
                queued.append(document)
        else:
            duplicates += 1
    return queued, failed, duplicates, errors


@team_view(Role.ADMIN)
@require_POST
def corpus_delete(request: HttpRequest, corpus_id: int) -> HttpResponse:
    corpus = corpus_selectors.corpus_get(team=request.team, corpus_id=corpus_id)
    name = corpus.name
    corpus_services.corpus_delete(corpus=corpus)
    messages.success(request, f"Corpus {name} and its documents were deleted.")
    return redirect("corpora")


@team_view()
def document_detail(request: HttpRequest, document_id: int) -> HttpResponse:
    """A document's chunks in order; ``?chunk=<id>`` highlights the passage a citation points at."""
    document = web_selectors.document_get(team=request.team, document_id=document_id)
    try:
        cited = int(request.GET.get("chunk", ""))
    except ValueError:
        cited = None
    return render(
        request,
        "web/document.html",
        {
            "document": document,
            "corpus": document.corpus,
            "chunks": web_selectors.document_chunks(document=document),
            "cited": cited,
            "query": request.GET.get("q", ""),
            "can_edit": can(request, Role.MEMBER),
        },
    )


@team_view(Role.MEMBER)
@require_POST
def document_delete(request: HttpRequest, document_id: int) -> HttpResponse:
    document = web_selectors.document_get(team=request.team, document_id=document_id)
    corpus_id, title = document.corpus_id, str(document)
    corpus_services.document_delete(document=document)
    messages.success(request, f"{title} was deleted.")
    return redirect("corpus-detail", corpus_id=corpus_id)
