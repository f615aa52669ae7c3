"""Evaluation sets (labelled questions) and evaluation runs (a set through several pipelines, one row each)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from apps.core.models import FINISHED_STATUSES, JobStatus


class EvalSource(models.TextChoices):
    UPLOAD = "upload"
    SHIPPED = "shipped"


class EvalSet(models.Model):
    """A team's labelled questions: ``items`` is a list of ``{"id", "question", "answers": [...]}``."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="eval_sets")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=16, choices=EvalSource.choices, default=EvalSource.UPLOAD)
    filename = models.CharField(max_length=255, blank=True, help_text="The uploaded file, or the shipped set's name")
    items = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="evalset_unique_name_per_team")]

    def __str__(self) -> str:
        return f"{self.name} ({len(self.items)} questions)"

    @property
    def size(self) -> int:
        return len(self.items)


class EvalRun(models.Model):
    """One evaluation job: every question of a set through each of ``pipelines``, under one hold."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="eval_runs")
    eval_set = models.ForeignKey(EvalSet, on_delete=models.CASCADE, related_name="runs")
    pipelines = models.ManyToManyField("rag.Pipeline", related_name="eval_runs", blank=True)
    # The pipelines' names in the order asked (a pipeline deleted later still names its rows).
    pipeline_names = models.JSONField(default=list)
    job = models.OneToOneField("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="eval_run")
    # The hold that still covers the questions not yet run (each row carves its own from it).
    reservation = models.ForeignKey("costs.Reservation", on_delete=models.SET_NULL, null=True, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    estimate = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal(0),
                                   help_text="The worst case reserved before the first question ran")
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal(0))
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"evaluation #{self.pk} of {self.eval_set_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class EvalRow(models.Model):
    """One question of the set through one pipeline: the answer, its scores, cost, latency and quality."""

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="rows")
    pipeline = models.ForeignKey("rag.Pipeline", on_delete=models.SET_NULL, null=True, blank=True)
    pipeline_name = models.CharField(max_length=200)
    item_id = models.CharField(max_length=200)
    position = models.PositiveIntegerField(default=0)
    question = models.TextField()
    gold = models.JSONField(default=list)
    query_run = models.ForeignKey("rag.QueryRun", on_delete=models.SET_NULL, null=True, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    answer = models.TextField(blank=True)
    contained = models.FloatField(null=True, blank=True)
    f1 = models.FloatField(null=True, blank=True)
    exact_match = models.FloatField(null=True, blank=True)
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    quality_label = models.CharField(max_length=32, blank=True)
    quality = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "pipeline_name", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "pipeline_name", "item_id"], name="evalrow_one_per_question")
        ]

    def __str__(self) -> str:
        return f"{self.pipeline_name} · {self.item_id}"
