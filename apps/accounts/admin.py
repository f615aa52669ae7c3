from django.contrib import admin

from apps.accounts.models import ApiKey, Invitation, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "prefix", "scopes", "created_by", "last_used_at", "revoked_at"]
    list_filter = ["team"]
    search_fields = ["name", "prefix"]
    # Keys are created in the UI or API, where the secret is shown once; the admin only revokes.
    readonly_fields = ["prefix", "secret_hash", "created_at", "last_used_at", "created_by"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset) -> None:
        from apps.accounts.services import api_key_revoke

        for api_key in queryset:
            api_key_revoke(api_key=api_key)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["team", "role", "note", "created_by", "created_at", "expires_at", "accepted_by", "revoked_at"]
    list_filter = ["team", "role"]
    # Links are created in the UI (the token is shown once); the admin reads and revokes.
    readonly_fields = ["nonce_hash", "created_by", "created_at", "accepted_at", "accepted_by"]

    def has_add_permission(self, request) -> bool:
        return False
