"""Admin: corpora, documents (status, error, filters) and chunks (read-only)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count

from apps.corpora.models import Chunk, Corpus, Document


@admin.register(Corpus)
class CorpusAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "team",
        "embedding_model",
        "index_type",
        "chunk_tokens",
        "overlap_tokens",
        "n_documents",
        "created_at",
    ]
    list_filter = ["team", "index_type", "embedding_model"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("team").annotate(_n_documents=Count("documents"))

    @admin.display(description="documents", ordering="_n_documents")
    def n_documents(self, corpus: Corpus) -> int:
        return corpus._n_documents


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["__str__", "corpus", "status", "media_type", "size", "token_count", "short_error", "created_at"]
    list_filter = ["status", "media_type", "corpus__team", "corpus"]
    search_fields = ["title", "filename", "sha256", "external_id", "error"]
    readonly_fields = ["sha256", "size", "file_path", "token_count", "created_at", "updated_at"]
    list_select_related = ["corpus"]

    @admin.display(description="error")
    def short_error(self, document: Document) -> str:
        return (document.error[:80] + "…") if len(document.error) > 80 else document.error


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ["__str__", "document", "ordinal", "token_count", "char_start", "char_end", "vector_id"]
    list_filter = ["document__corpus"]
    search_fields = ["text"]
    list_select_related = ["document"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
