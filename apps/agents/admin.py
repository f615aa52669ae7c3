"""Admin: tools (changes go through the services, so every save re-indexes), the http allow-list, agents, runs."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from apps.agents import services
from apps.agents.models import Agent, AgentRun, HttpAllowedHost, Tool
from apps.core.display import seconds
from apps.core.errors import ServiceError
from apps.costs.money_format import usd


class ToolAdminForm(forms.ModelForm):
    class Meta:
        model = Tool
        fields = ["team", "name", "description", "kind", "parameters", "config", "examples", "enabled"]

    def clean(self):
        data = super().clean()
        try:
            services.tool_validate(
                team=data.get("team"), name=data.get("name") or "", description=data.get("description") or "",
                parameters=data.get("parameters"), kind=data.get("kind") or "", config=data.get("config"),
                examples=data.get("examples"),
            )
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from exc
        return data


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    form = ToolAdminForm
    list_display = ["name", "team", "kind", "enabled", "version", "updated_at"]
    list_filter = ["kind", "enabled", ("team", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description"]
    readonly_fields = ["version", "created_by", "created_at", "updated_at"]
    fields = ["team", "name", "description", "kind", "parameters", "config", "examples", "enabled", *readonly_fields]

    def save_model(self, request, obj, form, change):
        data = {field: form.cleaned_data.get(field) for field in services.TOOL_FIELDS if field in form.cleaned_data}
        if change:
            original = Tool.objects.get(pk=obj.pk)
            saved = services.tool_update(tool=original, **{f: data[f] for f in form.changed_data if f in data})
        else:
            saved = services.tool_create(team=form.cleaned_data.get("team"), created_by=request.user, **data)
        obj.pk = saved.pk
        obj.version = saved.version

    def delete_model(self, request, obj):
        services.tool_delete(tool=obj)

    def delete_queryset(self, request, queryset):
        for tool in queryset:
            services.tool_delete(tool=tool)


@admin.register(HttpAllowedHost)
class HttpAllowedHostAdmin(admin.ModelAdmin):
    list_display = ["host", "note", "created_at"]
    search_fields = ["host", "note"]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "model_endpoint", "top_k", "similarity_threshold", "max_depth", "step_limit"]
    list_filter = [("team", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description"]
    readonly_fields = ["created_by", "created_at", "updated_at"]


@admin.register(AgentRun)
class AgentRunAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "team",
        "agent",
        "status",
        "finish_reason",
        "tool_outcome",
        "model_calls",
        "cost_usd",
        "latency",
        "created_at",
    ]
    list_filter = ["status", "tool_outcome", ("team", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["request", "answer", "error"]
    list_select_related = ["team", "agent"]
    readonly_fields = [f.name for f in AgentRun._meta.fields]

    @admin.display(description="cost", ordering="cost")
    def cost_usd(self, run: AgentRun) -> str:
        return usd(run.cost)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, run: AgentRun) -> str:
        return seconds(run.latency_ms)

    def has_add_permission(self, request):
        return False
