from django.contrib import admin

from apps.core.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "team", "status", "progress_done", "progress_total", "attempts", "created_at"]
    list_filter = ["status", "kind", "queue", "team"]
    search_fields = ["kind", "error", "worker"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
