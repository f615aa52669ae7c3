"""The admin's ledger, with the answer-quality filter and CSV column this app adds (the costs app, below
this one, does not know query runs' labels)."""

from __future__ import annotations

from django.contrib import admin

from apps.costs.admin import UsageRecordAdmin
from apps.costs.models import UsageRecord
from apps.rag.models import QualityLabel
from apps.rag.selectors import ledger_of_quality, ledger_with_quality_label


class QualityLabelFilter(admin.SimpleListFilter):
    """The rows of query runs with a given answer quality (docs/quality.md)."""

    title = "answer quality"
    parameter_name = "quality"

    def lookups(self, request, model_admin):
        return [*QualityLabel.choices, ("none", "not assessed (and rows of no query)")]

    def queryset(self, request, queryset):
        return ledger_of_quality(queryset, self.value()) if self.value() else queryset


class LedgerAdmin(UsageRecordAdmin):
    list_filter = ["team", "stage", QualityLabelFilter, *UsageRecordAdmin.list_filter[2:]]

    def get_queryset(self, request):
        return ledger_with_quality_label(super().get_queryset(request))


admin.site.unregister(UsageRecord)
admin.site.register(UsageRecord, LedgerAdmin)
