from django.contrib import admin

from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, TeamCacheSettings
from apps.answer_cache.selectors import cache_metrics


@admin.register(AnswerCacheEntry)
class AnswerCacheEntryAdmin(admin.ModelAdmin):
    list_display = ("question", "team", "pipeline", "hits", "cost", "size", "priority", "last_used_at")
    list_filter = ("team", "pipeline")
    search_fields = ("question", "answer")
    readonly_fields = ("vector", "source_run", "key", "question_hash", "observations")


@admin.register(AnswerCacheLookup)
class AnswerCacheLookupAdmin(admin.ModelAdmin):
    list_display = ("query_run", "team", "outcome", "similarity", "error_bound", "rejected", "saved", "created_at")
    list_filter = ("outcome", "team")
    readonly_fields = ("vector", "query_run", "entry")


@admin.register(TeamCacheSettings)
class TeamCacheSettingsAdmin(admin.ModelAdmin):
    list_display = ("team", "max_entries", "policy", "hits", "misses", "false_hits_caught", "dollars_saved")

    @staticmethod
    def _metrics(obj) -> dict:
        return cache_metrics(team=obj.team)

    @admin.display(description="hits")
    def hits(self, obj) -> int:
        return self._metrics(obj)["hits"]

    @admin.display(description="misses")
    def misses(self, obj) -> int:
        return self._metrics(obj)["misses"]

    @admin.display(description="false hits caught")
    def false_hits_caught(self, obj) -> int:
        return self._metrics(obj)["false_hits_caught"]

    @admin.display(description="dollars saved")
    def dollars_saved(self, obj):
        return self._metrics(obj)["dollars_saved"]
