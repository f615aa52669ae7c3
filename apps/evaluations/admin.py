from django.contrib import admin

from apps.evaluations.models import EvalRow, EvalRun, EvalSet


@admin.register(EvalSet)
class EvalSetAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "source", "size", "created_at")
    list_filter = ("source",)
    search_fields = ("name",)
    readonly_fields = ("items",)


class EvalRowInline(admin.TabularInline):
    model = EvalRow
    extra = 0
    can_delete = False
    fields = ("pipeline_name", "item_id", "status", "contained", "f1", "cost", "latency_ms", "quality_label")
    readonly_fields = fields


@admin.register(EvalRun)
class EvalRunAdmin(admin.ModelAdmin):
    list_display = ("pk", "team", "eval_set", "status", "estimate", "cost", "created_at")
    list_filter = ("status",)
    readonly_fields = ("job", "reservation", "estimate", "cost", "pipeline_names")
    inlines = [EvalRowInline]
