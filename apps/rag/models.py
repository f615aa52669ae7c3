from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from apps.costs.models import MONEY, ZERO


class Retriever(models.TextChoices):
    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"
    NONE = "none", "none (retrieval-free: the model answers alone)"


class Pipeline(models.Model):
    """A named, validated RAG configuration. Every option's effect on cost is explained in help_text."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="pipelines")
    name = models.SlugField(max_length=120, help_text="Also the `model` name on the OpenAI-compatible API")
    description = models.CharField(max_length=500, blank=True)
    corpora = models.ManyToManyField("corpora.Corpus", related_name="pipelines", blank=True)
    retriever = models.CharField(
        max_length=16, choices=Retriever.choices, default=Retriever.HYBRID,
        help_text="hybrid fuses dense and BM25; retrieval costs one query embedding either way",
    )
    top_k = models.PositiveSmallIntegerField(
        default=5, help_text="Passages retrieved; each adds its tokens to the prompt (the main cost driver)"
    )
    compression_method = models.CharField(
        max_length=64, default="none", help_text="Shrinks retrieved passages before prompting; its own cost is billed"
    )
    compression_target = models.FloatField(
        default=1.0, help_text="≤ 1: share of context tokens to keep; > 1: a token budget for the context"
    )
    prompting_strategy = models.CharField(max_length=64, default="naive")
    prompting_options = models.JSONField(
        default=dict, blank=True,
        help_text="Options of the prompting strategy (superposition: top_k, positions, answer_mode, doc_weight)",
    )
    attention_backend = models.CharField(
        max_length=64, default="full",
        help_text="How answers attend to the fixed context's cached KV: full (exact), squeezed or retrieval (sparse)",
    )
    attention_options = models.JSONField(
        default=dict, blank=True, help_text="Options of the attention backend (e.g. keep_fraction, top_k)"
    )
    fixed_context = models.TextField(
        blank=True,
        help_text="A long text every answer reads (prefilled once, KV cached); replaces retrieval when set",
    )
    fixed_context_corpus = models.ForeignKey(
        "corpora.Corpus", on_delete=models.SET_NULL, null=True, blank=True, related_name="fixed_context_pipelines",
        help_text="Or: a corpus whose documents, concatenated, are the fixed context",
    )
    decoding_options = models.JSONField(
        default=dict, blank=True,
        help_text="Overrides of the model's decoding defaults: repetition_guard (stop loops early, saving their "
        "tokens), repetition_penalty, no_repeat_ngram_size, stop (a list of strings)",
    )
    abstain_below = models.FloatField(
        null=True, blank=True,
        help_text="0..1: when the best hit's retrieval confidence (its percentile among this pipeline's earlier "
        "runs) is below this, answer \"not found in the documents\" without generating (no generation cost). "
        "Empty: never abstain",
    )
    answer_cache = models.BooleanField(
        default=True,
        help_text="Reuse this team's earlier answers to the same question, or a verified same-intent one "
        "(docs/cache.md): a hit costs the question's embedding instead of the pipeline",
    )
    cascade = models.JSONField(
        default=dict, blank=True,
        help_text="A cascade: {\"tiers\": [pipeline ids, cheapest first], \"scorer\": fitted JSON} — each tier "
        "answers in turn until the scorer accepts (docs/cascades.md). Empty: an ordinary pipeline",
    )
    model_endpoint = models.ForeignKey("costs.ModelEndpoint", on_delete=models.PROTECT, related_name="pipelines")
    max_output_tokens = models.PositiveIntegerField(default=128, help_text="Caps the answer, and the worst-case cost")
    history_token_budget = models.PositiveIntegerField(
        default=512,
        help_text="Follow-up questions carry the conversation's newest turns within this many tokens (each is "
        "read, and billed, as prompt); older turns are dropped. 0: every question is asked alone",
    )
    system_prompt = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="pipeline_name_unique_per_team")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_cascade(self) -> bool:
        return bool((self.cascade or {}).get("tiers"))

    @property
    def has_fixed_context(self) -> bool:
        return bool(self.fixed_context.strip()) or self.fixed_context_corpus_id is not None


class QueryStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class QueryOrigin(models.TextChoices):
    """What asked the question: a person or client (the Ask page's history and the query list show these),
    or a background job's row (evaluations, bulk jobs: in their own results, the ledger and usage)."""

    ASK = "ask"
    EVALUATION = "evaluation"
    BULK = "bulk"


FINISHED_QUERY_STATUSES = (QueryStatus.SUCCEEDED, QueryStatus.FAILED, QueryStatus.CANCELLED)


class QualityLabel(models.TextChoices):
    """An answer's quality (``workers.rag.quality``); blank: not assessed (direct calls, fixed contexts)."""

    GROUNDED = "grounded", "grounded (its sentences are supported by the passages)"
    WEAK = "weak", "weak (partly supported)"
    UNSUPPORTED = "unsupported", "unsupported (not supported by the passages)"
    DEGENERATE = "degenerate", "degenerate (a loop stopped by the guard, or empty)"
    ABSTAINED = "abstained", "abstained (not found in the documents: nothing generated)"


class BaselineKind(models.TextChoices):
    """How a run's baseline (the naive pipeline's cost, which its savings are claimed against) was obtained."""

    EXACT = "exact", "exact (token-priced)"
    ESTIMATE = "estimate", "estimate (cost model)"
    MEASURED = "measured", "measured"


class QueryRun(models.Model):
    """One question through a pipeline (or one chat call to a model endpoint), with its cost."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="query_runs")
    pipeline = models.ForeignKey(Pipeline, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    endpoint = models.ForeignKey("costs.ModelEndpoint", on_delete=models.SET_NULL, null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    job = models.OneToOneField("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="query_run")
    reservation = models.ForeignKey("costs.Reservation", on_delete=models.SET_NULL, null=True, blank=True)
    question = models.TextField()
    # The conversation the model reads: a direct call's whole list; a pipeline's history (fitted to its
    # history_token_budget) then the question.
    messages = models.JSONField(default=list, blank=True)
    conversation = models.ForeignKey(
        "conversations.Conversation", on_delete=models.SET_NULL, null=True, blank=True, related_name="turns",
        help_text="The Ask page's thread this question is a turn of",
    )
    regenerated_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="regenerations",
        help_text="The turn this one asks again (it replaces it in the conversation's history)",
    )
    history = models.JSONField(
        default=dict, blank=True,
        help_text="The conversation history the prompt carried: budget, tokens, turns kept and dropped, "
        "the retrieval query",
    )
    decoding = models.JSONField(
        default=dict, blank=True,
        help_text="This request's decoding overrides (temperature, top_p, stop), over the pipeline's",
    )
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    origin = models.CharField(max_length=16, choices=QueryOrigin.choices, default=QueryOrigin.ASK, db_index=True)
    status = models.CharField(max_length=16, choices=QueryStatus.choices, default=QueryStatus.QUEUED, db_index=True)
    answer = models.TextField(blank=True, help_text="Grows while the answer streams")
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    citations = models.JSONField(default=list, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    context_tokens_before = models.PositiveIntegerField(default=0)
    context_tokens_after = models.PositiveIntegerField(default=0)
    repetition_tokens_saved = models.PositiveIntegerField(
        default=0, help_text="Output tokens of the cap not spent because the degeneration guard stopped a loop"
    )
    quality_label = models.CharField(
        max_length=16, choices=QualityLabel.choices, blank=True, db_index=True,
        help_text="How well the answer is supported by what was retrieved (blank: not assessed). "
        "Independent of status: a succeeded run finished, whatever its label",
    )
    support = models.FloatField(null=True, blank=True, help_text="Share of answer sentences a passage supports")
    support_score = models.FloatField(null=True, blank=True, help_text="Mean sentence support score, 0..1")
    retrieval_confidence = models.FloatField(
        null=True, blank=True, help_text="The best hit's percentile among the pipeline's earlier runs' best hits"
    )
    citations_removed = models.PositiveSmallIntegerField(
        default=0, help_text="Citation markers past the number of sources, removed from the answer"
    )
    quality = models.JSONField(default=dict, blank=True, help_text="The quality signals in full (per sentence)")
    cascade = models.JSONField(
        default=dict, blank=True,
        help_text="A cascade's run: {answered_by, tier, tiers: [{pipeline, score, threshold, decision, reason, "
        "cost, quality_label}]} (docs/cascades.md)",
    )
    degradation = models.JSONField(
        default=dict, blank=True,
        help_text="The budget degradation applied before the hold (policy, used_percent, top_k_cap, max_tiers, "
        "extractive_only, note); empty: none",
    )
    cost = models.DecimalField(**MONEY, default=ZERO)
    baseline_cost = models.DecimalField(
        **MONEY, default=ZERO, help_text="Naive RAG, same model, every chunk uncompressed"
    )
    baseline_kind = models.CharField(
        max_length=16, choices=BaselineKind.choices, blank=True,
        help_text="exact: token prices; estimate: device time from the cost model; measured: what ran",
    )
    measured_baseline_cost = models.DecimalField(
        **MONEY, null=True, blank=True,
        help_text="The naive pipeline run for real (a shadow baseline, billed to the operator team)",
    )
    savings = models.DecimalField(**MONEY, default=ZERO)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"query #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_QUERY_STATUSES

    @property
    def savings_percent(self) -> float:
        if not self.baseline_cost:
            return 0.0
        return float(100 * self.savings / self.baseline_cost)

    @property
    def model_name(self) -> str:
        if self.pipeline_id:
            return self.pipeline.name
        return self.endpoint.name if self.endpoint_id else ""


__all__ = [
    "FINISHED_QUERY_STATUSES", "BaselineKind", "Decimal", "Pipeline", "QualityLabel", "QueryRun", "QueryStatus",
    "Retriever",
]
