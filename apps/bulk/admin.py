from django.contrib import admin

from apps.bulk.models import BulkJob, BulkRow


class BulkRowInline(admin.TabularInline):
    model = BulkRow
    extra = 0
    can_delete = False
    fields = ("position", "row_id", "question", "status", "answer", "quality_label", "cost", "prompt_tokens",
              "tokens_saved", "fallback", "error")
    readonly_fields = fields


@admin.register(BulkJob)
class BulkJobAdmin(admin.ModelAdmin):
    list_display = ("id", "team", "pipeline", "status", "rows_done", "rows_total", "batch_size", "cost", "savings",
                    "created_at")
    list_filter = ("status", "batch_size")
    readonly_fields = ("job", "reservation", "estimate", "cost", "baseline_cost", "savings")
    inlines = [BulkRowInline]
