"""A bulk question job (a file of questions run against a pipeline as one background job) and its rows."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.costs.models import MONEY, ZERO


class BulkStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RowStatus(models.TextChoices):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class BulkMode(models.TextChoices):
    DIRECT = "direct", "answered here, row by row"
    PROVIDER_BATCH = "provider_batch", "submitted to the provider's Batch API (batch prices, within 24 h)"


class BulkJob(models.Model):
    """One uploaded file of questions; its progress lives on ``job`` (apps.core Job), its hold on ``reservation``."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="bulk_jobs")
    pipeline = models.ForeignKey("rag.Pipeline", on_delete=models.SET_NULL, null=True, related_name="bulk_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    job = models.OneToOneField("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="bulk_job")
    reservation = models.ForeignKey("costs.Reservation", on_delete=models.SET_NULL, null=True, blank=True)
    filename = models.CharField(max_length=255, blank=True)
    input_format = models.CharField(max_length=8)  # csv | jsonl
    batch_size = models.PositiveSmallIntegerField(default=1, help_text="Questions packed per prompt (k)")
    status = models.CharField(max_length=16, choices=BulkStatus.choices, default=BulkStatus.QUEUED, db_index=True)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    rows_failed = models.PositiveIntegerField(default=0)
    batches_fallback = models.PositiveIntegerField(default=0, help_text="Rows answered alone after a parse failure")
    estimate = models.DecimalField(**MONEY, default=ZERO, help_text="The worst case held for the whole job")
    cost = models.DecimalField(**MONEY, default=ZERO)
    baseline_cost = models.DecimalField(**MONEY, default=ZERO)
    savings = models.DecimalField(**MONEY, default=ZERO)
    error = models.TextField(blank=True)
    # provider_batch (apps/bulk/provider_batch.py): the prompts are built here, answered by the provider's
    # Batch API; its file and batch ids are stored before anything else happens, so nothing is sent twice.
    mode = models.CharField(max_length=16, choices=BulkMode.choices, default=BulkMode.DIRECT)
    provider_input_file_id = models.CharField(max_length=255, blank=True)
    provider_batch_id = models.CharField(max_length=255, blank=True, db_index=True)
    provider_status = models.CharField(max_length=32, blank=True, help_text="The provider batch's last status")
    provider_polled_at = models.DateTimeField(null=True, blank=True)
    provider_savings = models.DecimalField(
        **MONEY, default=ZERO, help_text="The batch price's saving on the answered rows against the normal price"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"bulk #{self.pk} ({self.rows_done}/{self.rows_total}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (BulkStatus.SUCCEEDED, BulkStatus.FAILED, BulkStatus.CANCELLED)


class BulkRow(models.Model):
    """One question of a bulk job and, once done, its answer, citations, quality label, cost and tokens."""

    bulk_job = models.ForeignKey(BulkJob, on_delete=models.CASCADE, related_name="rows")
    position = models.PositiveIntegerField()
    row_id = models.CharField(max_length=255, blank=True, help_text="The file's id column (or the row number)")
    question = models.TextField()
    gold = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=RowStatus.choices, default=RowStatus.PENDING, db_index=True)
    query_run = models.OneToOneField("rag.QueryRun", on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="bulk_row")
    answer = models.TextField(blank=True)
    citations = models.JSONField(default=list, blank=True)
    quality_label = models.CharField(max_length=16, blank=True)
    batch_size = models.PositiveSmallIntegerField(default=1, help_text="Questions in the prompt that answered it")
    fallback = models.BooleanField(default=False, help_text="Answered alone after its batch answer did not parse")
    prompt_tokens = models.PositiveIntegerField(default=0, help_text="Its share of the generation's prompt tokens")
    completion_tokens = models.PositiveIntegerField(default=0)
    tokens_saved = models.IntegerField(default=0, help_text="Prompt tokens saved against asking it alone (naive)")
    cost = models.DecimalField(**MONEY, default=ZERO)
    error = models.TextField(blank=True)
    # provider_batch: what the row's answer is settled with once the provider returns it (its retrieved
    # passages, kept for citations and the quality check, and the request sent).
    prepared = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["bulk_job", "position"]
        constraints = [models.UniqueConstraint(fields=["bulk_job", "position"], name="bulk_row_position_unique")]

    def __str__(self) -> str:
        return f"row {self.position} of bulk #{self.bulk_job_id}"
