"""The admin panel for cost budgets: budgets with progress, the price book with history,
model endpoints, and the ledger (read-only, filterable, CSV export)."""

from __future__ import annotations

import csv

from django.contrib import admin
from django.db import models
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.html import format_html

from apps.costs.models import (
    Budget,
    DegradationPolicy,
    ModelEndpoint,
    Price,
    Reservation,
    UsageRecord,
    WorkerProfile,
)
from apps.costs.money_format import money_str, usd
from apps.costs.selectors import budget_status, spend_per_day

# The list columns fit a 1280 px window (the ledger's 8 columns in the pane beside the filters): money
# as $ with the digits that matter (apps.costs.money_format.usd; the CSV export keeps all 10 places),
# times as "12-07 11:53", who spent as one column (a user or a key), tokens as "prompt → output".
# The admin's app sidebar is off (apps/config/urls.py): it took 275 px from every list.


def _when(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else "—"


def _who(obj) -> str:
    if getattr(obj, "user", None) is not None:
        return obj.user.username
    if getattr(obj, "api_key", None) is not None:
        return f"key {obj.api_key.name}"
    return "—"


def _bar(percent: float, warn: bool) -> str:
    color = "#a4262c" if percent >= 100 else ("#b7791f" if warn else "#1f6f5c")
    return format_html(
        '<div role="progressbar" aria-valuenow="{}" aria-valuemin="0" aria-valuemax="100" '
        'style="width:90px;background:#eee;border-radius:4px"><div style="width:{}%;background:{};'
        'height:10px;border-radius:4px"></div></div>',
        round(percent),
        round(min(percent, 100)),
        color,
    )


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["label", "limit", "spent", "reserved", "overage", "usage_bar", "enabled"]
    list_filter = ["team", "scope", "period", "enabled"]
    autocomplete_fields = ["user", "api_key"]
    change_form_template = "admin/costs/budget/change_form.html"

    list_select_related = ["team", "user", "api_key"]

    @admin.display(description="budget", ordering="team__name")
    def label(self, budget: Budget) -> str:
        target = {"team": "team", "user": f"{budget.user}", "api_key": f"key {budget.api_key}"}[budget.scope]
        return f"{budget.team} · {target} · {budget.period}"

    @admin.display(description="limit", ordering="hard_limit")
    def limit(self, budget: Budget) -> str:
        return f"{usd(budget.hard_limit)} (warn {budget.soft_limit_percent}%)"

    @admin.display(description="spent")
    def spent(self, budget: Budget) -> str:
        return usd(budget_status(budget=budget).spent)

    @admin.display(description="reserved")
    def reserved(self, budget: Budget) -> str:
        return usd(budget_status(budget=budget).reserved)

    @admin.display(description="overage")
    def overage(self, budget: Budget) -> str:
        return usd(budget_status(budget=budget).overage)

    @admin.display(description="used")
    def usage_bar(self, budget: Budget) -> str:
        status = budget_status(budget=budget)
        return _bar(status.used_percent, status.over_soft_limit)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        budget = self.get_object(request, object_id)
        if budget is not None:
            status = budget_status(budget=budget)
            days = spend_per_day(team=budget.team, days=30)
            peak = max((float(cost) for _, cost in days), default=0.0) or 1.0
            extra_context.update(
                budget_status=status,
                usage_bar=_bar(status.used_percent, status.over_soft_limit),
                spend_days=[(day, cost, round(100 * float(cost) / peak, 1)) for day, cost in days],
            )
        return super().change_view(request, object_id, form_url, extra_context=extra_context)


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model_name", "from_date", "input", "output", "cached_input", "batch", "gpu_second",
                    "cpu_second", "provider", "source"]
    list_filter = ["provider", "source"]

    @admin.display(description="from", ordering="effective_from")
    def from_date(self, price: Price) -> str:
        return f"{price.effective_from:%Y-%m-%d}"

    @admin.display(description="in /Mtok", ordering="input_per_mtok")
    def input(self, price: Price) -> str:
        return usd(price.input_per_mtok)

    @admin.display(description="out /Mtok", ordering="output_per_mtok")
    def output(self, price: Price) -> str:
        return usd(price.output_per_mtok)

    @admin.display(description="cached /Mtok", ordering="cached_input_per_mtok")
    def cached_input(self, price: Price) -> str:
        return usd(price.cached_input_per_mtok)

    @admin.display(description="batch in/out /Mtok", ordering="batch_input_per_mtok")
    def batch(self, price: Price) -> str:
        if price.batch_input_per_mtok is None:
            return "-"
        return f"{usd(price.batch_input_per_mtok)} / {usd(price.batch_output_per_mtok)}"

    @admin.display(description="/GPU-s", ordering="per_gpu_second")
    def gpu_second(self, price: Price) -> str:
        return usd(price.per_gpu_second)

    @admin.display(description="/CPU-s", ordering="per_cpu_second")
    def cpu_second(self, price: Price) -> str:
        return usd(price.per_cpu_second)
    search_fields = ["model_name"]
    date_hierarchy = "effective_from"

    def get_readonly_fields(self, request, obj=None):
        # A price that was charged is history: change it by adding a new row from a later date.
        if obj is not None and obj.usagerecord_set.exists():
            return [f.name for f in Price._meta.fields]
        return []


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "team", "price_name", "context_window", "max_output_tokens", "enabled",
                    "batch_api"]
    list_filter = ["kind", "enabled", "batch_api", "team"]
    search_fields = ["name", "price_name", "remote_model"]
    # The API key itself (encrypted) is never in a form; teams set it on their Models page or the API.
    readonly_fields = ["api_key_hint"]
    # A base URL typed without a scheme is an https one (Django 6's default; 5.2 still assumes http).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class _Echo:
    def write(self, value: str) -> str:
        return value


LEDGER_COLUMNS = ["created_at", "team", "user", "api_key", "pipeline_name", "query_run_id", "agent_run_id", "stage",
                  "model_name", "prompt_tokens", "completion_tokens", "cached_tokens", "gpu_seconds", "cpu_seconds",
                  "latency_ms", "finish_reason", "quality_label", "cost", "price_input_per_mtok",
                  "price_output_per_mtok", "price_cached_input_per_mtok", "price_per_gpu_second",
                  "price_per_cpu_second"]


def ledger_csv_response(records, filename: str = "ledger.csv") -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(LEDGER_COLUMNS)
        for record in records.select_related("team", "user", "api_key").iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    record.created_at.isoformat(), record.team.name, getattr(record.user, "username", ""),
                    getattr(record.api_key, "name", ""), record.pipeline_name, record.query_run_id or "",
                    record.agent_run_id or "", record.stage, record.model_name, record.prompt_tokens,
                    record.completion_tokens, record.cached_tokens, record.gpu_seconds, record.cpu_seconds,
                    record.latency_ms, record.finish_reason,
                    # The answer quality of the row's query run, where the caller annotated it
                    # (apps.rag.selectors.ledger_with_quality_label; the admin's ledger does).
                    getattr(record, "quality_label", ""), *map(money_str, (
                        record.cost, record.price_input_per_mtok, record.price_output_per_mtok,
                        record.price_cached_input_per_mtok, record.price_per_gpu_second,
                        record.price_per_cpu_second,
                    )),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["when", "cost_usd", "team", "who", "stage", "model_name", "tokens", "gpu_s"]
    list_filter = ["team", "stage", "model_name", "user", "api_key", ("created_at", admin.DateFieldListFilter)]
    date_hierarchy = "created_at"
    search_fields = ["model_name", "pipeline_name"]
    actions = ["export_csv"]
    list_select_related = ["team", "user", "api_key"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="when", ordering="created_at")
    def when(self, record: UsageRecord) -> str:
        return _when(record.created_at)

    @admin.display(description="who")
    def who(self, record: UsageRecord) -> str:
        return _who(record)

    @admin.display(description="tokens in → out")
    def tokens(self, record: UsageRecord) -> str:
        cached = f" ({record.cached_tokens:,} cached)" if record.cached_tokens else ""
        return f"{record.prompt_tokens:,} → {record.completion_tokens:,}{cached}"

    @admin.display(description="GPU s", ordering="gpu_seconds")
    def gpu_s(self, record: UsageRecord) -> str:
        return f"{record.gpu_seconds:.2f}" if record.gpu_seconds else "—"

    @admin.display(description="cost", ordering="cost")
    def cost_usd(self, record: UsageRecord) -> str:
        return usd(record.cost)

    @admin.action(description="Export the selected rows as CSV")
    def export_csv(self, request, queryset) -> HttpResponse:
        return ledger_csv_response(queryset)

    def changelist_view(self, request, extra_context=None):
        # ?export=csv exports everything the current filters select (not just one page).
        if request.GET.get("export") == "csv":
            params = request.GET.copy()
            del params["export"]
            request.GET = params
            changelist = self.get_changelist_instance(request)
            return ledger_csv_response(changelist.get_queryset(request))
        return super().changelist_view(request, extra_context)


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["id", "team", "who", "short_description", "estimate_usd", "actual_usd", "status", "expires"]
    list_filter = ["status", "team"]
    readonly_fields = [f.name for f in Reservation._meta.fields]
    list_select_related = ["team", "user", "api_key"]

    @admin.display(description="who")
    def who(self, reservation: Reservation) -> str:
        return _who(reservation)

    @admin.display(description="description")
    def short_description(self, reservation: Reservation) -> str:
        text = reservation.description
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="estimate", ordering="estimate")
    def estimate_usd(self, reservation: Reservation) -> str:
        return usd(reservation.estimate)

    @admin.display(description="actual", ordering="actual")
    def actual_usd(self, reservation: Reservation) -> str:
        return usd(reservation.actual)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, reservation: Reservation) -> str:
        return _when(reservation.expires_at)

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WorkerProfile)
class WorkerProfileAdmin(admin.ModelAdmin):
    """Read-only: the workers write their own profiles (measured at start, refit from the ledger)."""

    list_display = [
        "hostname", "model_name", "device", "queues", "prefill_tps", "decode_tps", "overhead_s", "source",
        "samples", "measured_at", "last_seen",
    ]
    list_filter = ["device", "source", "model_name"]
    search_fields = ["hostname", "model_name"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DegradationPolicy)
class DegradationPolicyAdmin(admin.ModelAdmin):
    """Budget-aware degradation (docs/cascades.md): rules checked before each query's hold."""

    list_display = ("team", "api_key", "rules", "enabled", "created_at")
    list_filter = ("enabled", "team")
    list_select_related = ("team", "api_key")
