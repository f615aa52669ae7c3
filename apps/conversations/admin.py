from django.contrib import admin

from apps.conversations.models import Conversation


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "team", "user", "updated_at")
    list_filter = ("team",)
    search_fields = ("title",)
