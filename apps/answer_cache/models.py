"""The per-team answer cache: entries, one lookup row per query that consulted it, per-team settings.

An entry belongs to one team and one key (``AnswerCacheEntry.key``: the pipeline's answer-relevant
settings, its corpora's index version and the embedder, hashed), so nothing is ever shared across
teams or served after the settings or the corpus changed. docs/cache.md.
"""

from __future__ import annotations

from django.db import models

from apps.costs.models import MONEY, ZERO


class CacheOutcome(models.TextChoices):
    HIT_EXACT = "hit_exact", "hit (same question)"
    HIT_SEMANTIC = "hit_semantic", "hit (same intent, verified)"
    MISS = "miss", "miss"
    BYPASS = "bypass", "bypass (cache off for this pipeline or request)"


class AnswerCacheEntry(models.Model):
    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="answer_cache_entries")
    pipeline = models.ForeignKey("rag.Pipeline", on_delete=models.CASCADE, related_name="answer_cache_entries")
    key = models.CharField(
        max_length=64, help_text="sha256 of the pipeline's answer settings, its corpora's version, the embedder"
    )
    question = models.TextField()
    question_hash = models.CharField(max_length=64, help_text="sha256 of the normalised question (exact hits)")
    vector = models.BinaryField(null=True, blank=True, help_text="The question's embedding, float32")
    embedder = models.CharField(max_length=200, blank=True)
    answer = models.TextField()
    finish_reason = models.CharField(max_length=32, blank=True)
    citations = models.JSONField(default=list, blank=True)
    cited_chunk_ids = models.JSONField(default=list, blank=True, help_text="Vector ids the answer rests on")
    quality = models.JSONField(default=dict, blank=True, help_text="The source run's quality fields")
    source_run = models.ForeignKey("rag.QueryRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    cost = models.DecimalField(**MONEY, default=ZERO, help_text="What the answer cost the first time: a hit's saving")
    baseline_cost = models.DecimalField(**MONEY, default=ZERO)
    baseline_kind = models.CharField(max_length=16, blank=True)
    size = models.PositiveIntegerField(default=0, help_text="Bytes: question, answer, citations, vector")
    hits = models.PositiveIntegerField(default=0)
    observations = models.JSONField(
        default=list, blank=True, help_text="[similarity, correct, caught] of lookups near it (its threshold)"
    )
    priority = models.FloatField(default=0.0, help_text="The eviction policy's priority (lowest leaves first)")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_used_at", "-id"]
        indexes = [models.Index(fields=["team", "priority"])]
        # One entry per question and key in a team: two misses of the same question finishing together
        # store one entry (answer_cache_store), and the exact lookup reads through this index.
        constraints = [
            models.UniqueConstraint(fields=["team", "key", "question_hash"], name="answer_cache_entry_unique_question")
        ]
        verbose_name_plural = "answer cache entries"

    def __str__(self) -> str:
        return self.question[:80]


class AnswerCacheLookup(models.Model):
    """What the cache did for one query run: its outcome, the candidate, the similarity, the saving."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="answer_cache_lookups")
    query_run = models.OneToOneField("rag.QueryRun", on_delete=models.CASCADE, related_name="cache_lookup")
    outcome = models.CharField(max_length=16, choices=CacheOutcome.choices, db_index=True)
    entry = models.ForeignKey(AnswerCacheEntry, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    key = models.CharField(max_length=64, blank=True)
    similarity = models.FloatField(null=True, blank=True)
    error_bound = models.FloatField(null=True, blank=True, help_text="The candidate's bound on a wrong hit")
    rejected = models.CharField(
        max_length=300, blank=True, help_text="Why verification rejected the candidate (a false hit caught)"
    )
    vector = models.BinaryField(null=True, blank=True, help_text="The question's embedding, until it is stored")
    saved = models.DecimalField(
        **MONEY, default=ZERO, help_text="A hit: the entry's original cost minus what the hit cost"
    )
    stored = models.BooleanField(default=False, help_text="A miss whose answer became an entry")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.outcome} for query #{self.query_run_id}"


class TeamCacheSettings(models.Model):
    """A team's own cache size limit and eviction policy (blank: the defaults), and GDSF's clock."""

    TEAM_FIELD = "team"

    team = models.OneToOneField("accounts.Team", on_delete=models.CASCADE, related_name="answer_cache_settings")
    max_entries = models.PositiveIntegerField(
        null=True, blank=True, help_text="Blank: PARSIMONY_ANSWER_CACHE_MAX_ENTRIES"
    )
    policy = models.CharField(max_length=16, blank=True, help_text="lru | gdsf | lec; blank: the default")
    clock = models.FloatField(default=0.0, help_text="GDSF's inflation L (the last victim's priority)")

    class Meta:
        verbose_name_plural = "team cache settings"

    def __str__(self) -> str:
        return f"cache settings of {self.team}"
