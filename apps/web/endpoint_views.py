"""Model endpoints (team pages): the team's OpenAI-compatible endpoints, managed by its owners and admins;
the global ones read-only. The API key is stored encrypted and never shown again (only its hint).
Every form posts, then redirects (POST-redirect-GET); a test's result comes back as a message."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import Role
from apps.core.errors import ServiceError
from apps.costs import connection_test
from apps.costs import selectors as cost_selectors
from apps.costs.models import ModelEndpoint
from apps.costs.money_format import usd
from apps.costs.services import endpoints as endpoint_services
from apps.web.access import can, team_view
from apps.web.endpoint_forms import EndpointForm

VALUES = ("name", "base_url", "model", "tokenizer", "price_name", "input_per_mtok", "output_per_mtok",
          "cached_input_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok", "context_window",
          "max_output_tokens", "enabled", "batch_api")


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


@team_view()
def endpoint_list(request: HttpRequest) -> HttpResponse:
    endpoints = list(cost_selectors.endpoint_list(team=request.team))
    for endpoint in endpoints:
        endpoint.price_row = cost_selectors.price_in_force(model_name=endpoint.price_name)
    return _no_store(render(request, "web/endpoints.html", {
        "endpoints": endpoints, "manage": can(request, Role.ADMIN), "team_id": request.team.pk,
    }))


def _plain(value: Decimal | None) -> str | None:
    """A price without trailing zeros or an exponent: 10.0000000000 → "10", 0.1500000000 → "0.15"."""
    return None if value is None else format(value.normalize(), "f")


def _initial(request, endpoint: ModelEndpoint | None) -> dict:
    if endpoint is None:
        return {"context_window": 128_000, "max_output_tokens": 1024, "enabled": True}
    values = {
        "name": endpoint.name, "base_url": endpoint.base_url, "model": endpoint.remote_model,
        "tokenizer": endpoint.tokenizer, "price_name": endpoint.price_name,
        "context_window": endpoint.context_window, "max_output_tokens": endpoint.max_output_tokens,
        "enabled": endpoint.enabled, "batch_api": endpoint.batch_api,
    }
    own = endpoint_services.team_price_name(team=request.team, name=endpoint.name)
    price = cost_selectors.price_in_force(model_name=endpoint.price_name)
    if endpoint.price_name == own and price is not None:
        values.update(price_name="", input_per_mtok=_plain(price.input_per_mtok),
                      output_per_mtok=_plain(price.output_per_mtok),
                      cached_input_per_mtok=_plain(price.cached_input_per_mtok),
                      batch_input_per_mtok=_plain(price.batch_input_per_mtok),
                      batch_output_per_mtok=_plain(price.batch_output_per_mtok))
    return values


def _edit(request: HttpRequest, endpoint: ModelEndpoint | None) -> HttpResponse:
    status = 200
    editing = endpoint is not None
    if request.method == "POST":
        form = EndpointForm(request.POST, editing=editing)
        if form.is_valid():
            values = {name: form.cleaned_data.get(name) for name in VALUES}
            values["tokenizer"] = values["tokenizer"] or ""
            values["price_name"] = values["price_name"] or ""
            values["batch_api"] = bool(values["batch_api"])
            try:
                saved = endpoint_services.endpoint_save(
                    team=request.team, endpoint=endpoint, api_key=form.cleaned_data.get("api_key") or None,
                    clear_api_key=bool(form.cleaned_data.get("clear_api_key")), **values,
                )
            except ServiceError as exc:
                fields = (exc.detail or {}).get("fields") or {}
                for name, message in fields.items():
                    form.add_error(name if name in form.fields else None, message)
                if not fields:
                    form.add_error(None, exc.message)
                status = exc.http_status
            else:
                messages.success(request, f"Endpoint {saved.name} saved. Test its connection below.")
                return redirect("endpoints")
        else:
            status = 400
    else:
        form = EndpointForm(initial=_initial(request, endpoint), editing=editing)
    return _no_store(render(request, "web/endpoint_form.html", {"form": form, "endpoint": endpoint}, status=status))


@team_view(Role.ADMIN)
def endpoint_create(request: HttpRequest) -> HttpResponse:
    return _edit(request, None)


@team_view(Role.ADMIN)
def endpoint_edit(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    return _edit(request, cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id, own=True))


@team_view(Role.ADMIN)
@require_POST
def endpoint_delete(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id, own=True)
    try:
        endpoint_services.endpoint_delete(endpoint=endpoint, team=request.team)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Endpoint {endpoint.name} deleted.")
    return redirect("endpoints")


@team_view(Role.ADMIN)
@require_POST
def endpoint_test(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = cost_selectors.endpoint_get(team=request.team, endpoint_id=endpoint_id)
    result = connection_test.endpoint_test(endpoint=endpoint, team=request.team, user=request.user)
    cost = f" Cost {usd(result.cost)}." if result.cost else ""
    text = f"{endpoint.name}: {result.message} ({result.latency_ms} ms).{cost}"
    (messages.success if result.ok else messages.error)(request, text)
    return redirect("endpoints")


@team_view(Role.ADMIN)
def endpoint_prices(request: HttpRequest) -> HttpResponse:
    """HTMX: the price book's names matching what was typed, as <option>s of the form's datalist."""
    query = (request.GET.get("price_name") or request.GET.get("q") or "").strip()[:100]
    prices = cost_selectors.price_book_search(team=request.team, query=query) if query else []
    return render(request, "web/_price_options.html", {"prices": prices})
