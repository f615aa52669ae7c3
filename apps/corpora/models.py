"""Corpora, their documents and chunks. FAISS holds vectors only, keyed by ``Chunk.vector_id``."""

from __future__ import annotations

from django.conf import settings
from django.db import models

# The engine's registry (indexes.vector_index.VALID_INDEX_TYPES) is the authority; the
# services validate against it. Listed here too so the web process never imports faiss.
INDEX_TYPE_CHOICES = [("auto", "auto (by size)"), ("flat", "flat (exact)"), ("hnsw", "HNSW"), ("ivf", "IVF")]


class Corpus(models.Model):
    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="corpora")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    embedding_model = models.CharField(max_length=200, default="all-MiniLM-L6-v2")
    chunk_tokens = models.PositiveIntegerField(default=256)
    overlap_tokens = models.PositiveIntegerField(default=32)
    index_type = models.CharField(max_length=16, choices=INDEX_TYPE_CHOICES, default="auto")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "corpora"
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="corpus_name_unique_per_team")]

    def __str__(self) -> str:
        return self.name

    @property
    def document_count(self) -> int:
        return self.documents.count()

    @property
    def chunk_count(self) -> int:
        return Chunk.objects.filter(document__corpus=self).count()


class DocumentStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class Document(models.Model):
    TEAM_FIELD = "corpus__team"

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=500, blank=True)
    filename = models.CharField(max_length=500)
    # Relative to DATA_ROOT: uploads/<team id>/<corpus id>/<sha256>.<ext>; blank when nothing was stored.
    file_path = models.CharField(max_length=500, blank=True)
    media_type = models.CharField(max_length=120, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveBigIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=DocumentStatus.choices, default=DocumentStatus.QUEUED, db_index=True
    )
    error = models.TextField(blank=True)
    token_count = models.PositiveIntegerField(default=0)
    external_id = models.CharField(max_length=255, blank=True, db_index=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["corpus", "sha256"]), models.Index(fields=["corpus", "status"])]

    def __str__(self) -> str:
        return self.title or self.filename

    @property
    def chunk_count(self) -> int:
        return self.chunks.count()


class Chunk(models.Model):
    TEAM_FIELD = "document__corpus__team"

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField(default=0)
    char_start = models.PositiveIntegerField(default=0)
    char_end = models.PositiveIntegerField(default=0)
    # The FAISS id: the chunk's own primary key (so unique per corpus, and never reused).
    vector_id = models.BigIntegerField(null=True, blank=True, unique=True)

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_ordinal_unique_per_document")
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
