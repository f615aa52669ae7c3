"""A conversation: one user's thread on the Ask page. Its turns are QueryRuns (``QueryRun.conversation``)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="conversations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["team", "user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title
