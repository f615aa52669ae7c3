"""Models, the versioned price book, the usage ledger and budgets.

Money is Decimal everywhere (USD, 10 decimal places): never float.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q, Sum

from apps.costs.money_format import usd

MONEY = {"max_digits": 24, "decimal_places": 10}
ZERO = Decimal("0")


class EndpointKind(models.TextChoices):
    LOCAL = "local", "local causal LM (loaded in the worker)"
    OPENAI = "openai", "OpenAI-compatible HTTP endpoint"


class ModelEndpoint(models.Model):
    """A model that Parsimony can call. team=None: available to every team."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    name = models.CharField(max_length=120, help_text="What pipelines and the OpenAI-compatible API call it")
    kind = models.CharField(max_length=16, choices=EndpointKind.choices, default=EndpointKind.LOCAL)
    source = models.CharField(
        max_length=500,
        blank=True,
        help_text="local: 'smollm2-135m-instruct', a .gguf file, a safetensors directory or an HF id on disk",
    )
    base_url = models.URLField(blank=True, help_text="openai: e.g. https://api.openai.com/v1")
    api_key_env = models.CharField(max_length=120, blank=True, help_text="openai: the env var that holds the key")
    # openai: the key itself, encrypted at rest (apps/core/secrets.py); decrypted only where the client is
    # built (apps.costs.metering.endpoint_target). It wins over api_key_env. Never shown again: the hint is.
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_hint = models.CharField(max_length=16, blank=True, editable=False, help_text="e.g. sk-...abcd")
    remote_model = models.CharField(max_length=200, blank=True, help_text="openai: the model id to send")
    price_name = models.CharField(
        max_length=200, help_text="The price book's name for this model (e.g. gpt-4o-mini, local/smollm2-135m)"
    )
    context_window = models.PositiveIntegerField(default=8192)
    max_output_tokens = models.PositiveIntegerField(default=512)
    tokenizer = models.CharField(
        max_length=500, blank=True, help_text="A local tokenizer for estimates (openai kind); blank: ~4 chars/token"
    )
    enabled = models.BooleanField(default=True)
    # openai: the provider offers the OpenAI Batch API (/v1/files + /v1/batches, results within 24 h at its
    # batch prices, ``Price.batch_*``); bulk jobs may then run there (apps/bulk/provider_batch.py).
    batch_api = models.BooleanField(
        default=False, help_text="openai: the provider offers the Batch API (bulk jobs may run there at batch prices)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="endpoint_name_unique_per_team"),
            models.UniqueConstraint(fields=["name"], condition=Q(team=None), name="global_endpoint_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    """A price for one model from a date on. Rows are never edited: a change is a new row."""

    model_name = models.CharField(max_length=200, db_index=True)
    effective_from = models.DateTimeField(db_index=True)
    input_per_mtok = models.DecimalField(**MONEY, default=ZERO, help_text="USD per 1M input tokens")
    output_per_mtok = models.DecimalField(**MONEY, default=ZERO, help_text="USD per 1M output tokens")
    cached_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True, help_text="blank: same as input")
    per_gpu_second = models.DecimalField(**MONEY, default=ZERO, help_text="local models: USD per GPU-second")
    per_cpu_second = models.DecimalField(**MONEY, default=ZERO, help_text="local models on CPU: USD per second")
    # The provider's Batch API prices (a job submitted as one batch, answered within 24 h); blank: no batch
    # price known, so bulk jobs cannot run as a provider batch on this model.
    batch_input_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="USD per 1M input tokens through the provider's Batch API"
    )
    batch_output_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="USD per 1M output tokens through the provider's Batch API"
    )
    provider = models.CharField(max_length=120, blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="Where the price came from")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model_name", "effective_from"], name="one_price_per_model_and_date")
        ]

    def __str__(self) -> str:
        return f"{self.model_name} from {self.effective_from:%Y-%m-%d}"


class Stage(models.TextChoices):
    EMBED = "embed"
    RETRIEVE = "retrieve"
    COMPRESS = "compress"
    GENERATE = "generate"
    AGENT_STEP = "agent-step"
    TOOL = "tool"
    PREFILL = "prefill"
    # What a remote endpoint reported beyond the bound its call reserved: billed in full, never
    # dropped, as its own row (apps.costs.billing).
    OVERAGE = "overage"


class UsageRecordQuerySet(models.QuerySet):
    def total_cost(self) -> Decimal:
        """What these ledger rows cost together (0 for none): the one way a run's, a hold's or a job's
        spend is read back from the ledger."""
        return self.aggregate(total=Sum("cost"))["total"] or ZERO


class UsageRecord(models.Model):
    """One model (or tool) call in the ledger, with the prices it was charged at."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="usage_records")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    query_run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    agent_run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    # A shadow baseline's rows (billed to the operator team): the query run whose savings they measure.
    shadow_of_query_run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    pipeline_name = models.CharField(max_length=120, blank=True, db_index=True)
    stage = models.CharField(max_length=16, choices=Stage.choices, db_index=True)
    model_name = models.CharField(max_length=200, db_index=True)
    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.SET_NULL, null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    gpu_seconds = models.DecimalField(max_digits=16, decimal_places=6, default=ZERO)
    cpu_seconds = models.DecimalField(max_digits=16, decimal_places=6, default=ZERO)
    latency_ms = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=32, blank=True)
    cost = models.DecimalField(**MONEY, default=ZERO)
    # The prices charged, copied: a later price change never alters a past cost.
    price = models.ForeignKey(Price, on_delete=models.PROTECT, null=True, blank=True)
    price_input_per_mtok = models.DecimalField(**MONEY, default=ZERO)
    price_output_per_mtok = models.DecimalField(**MONEY, default=ZERO)
    price_cached_input_per_mtok = models.DecimalField(**MONEY, default=ZERO)
    price_per_gpu_second = models.DecimalField(**MONEY, default=ZERO)
    price_per_cpu_second = models.DecimalField(**MONEY, default=ZERO)
    reservation = models.ForeignKey("Reservation", on_delete=models.SET_NULL, null=True, blank=True)
    # Which device and worker ran it (device-time rows): the cost model refits each worker's profile
    # from its own rows (apps.costs.services.profiles).
    device = models.CharField(max_length=16, blank=True)
    worker = models.CharField(max_length=255, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "created_at"])]

    def __str__(self) -> str:
        return f"{self.stage} · {self.model_name} · {usd(self.cost)}"


class BudgetScope(models.TextChoices):
    TEAM = "team"
    USER = "user"
    API_KEY = "api_key", "API key"


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


class Budget(models.Model):
    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="budgets")
    scope = models.CharField(max_length=16, choices=BudgetScope.choices, default=BudgetScope.TEAM)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, null=True, blank=True)
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    hard_limit = models.DecimalField(**MONEY, help_text="USD: requests that could exceed it are refused")
    soft_limit_percent = models.PositiveSmallIntegerField(
        default=80, help_text="Alert (e-mail + UI banner) when spend passes this share of the hard limit"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "scope", "period"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="team", user=None, api_key=None)
                    | Q(scope="user", user__isnull=False, api_key=None)
                    | Q(scope="api_key", api_key__isnull=False, user=None)
                ),
                name="budget_scope_matches_its_target",
            )
        ]

    def __str__(self) -> str:
        # "Demo team: team budget, $1.00 a day" / "Demo team: alice's budget, $5.00 a month"
        target = {"team": "team", "user": f"{self.user}'s", "api_key": f"key {self.api_key}"}[self.scope]
        per = "in total" if self.period == BudgetPeriod.TOTAL else f"a {self.period}"
        return f"{self.team}: {target} budget, {usd(self.hard_limit)} {per}"

    @property
    def soft_limit(self) -> Decimal:
        return (self.hard_limit * self.soft_limit_percent / 100).quantize(Decimal("0.0000000001"))


class BudgetWindow(models.Model):
    """A budget's counters for one period: the row that reservations lock."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="windows")
    period_start = models.DateTimeField()
    spent = models.DecimalField(**MONEY, default=ZERO)
    reserved = models.DecimalField(**MONEY, default=ZERO)
    # The ledger's spend in this period for the budget's scope when the window was created (a budget
    # created mid-period starts from it); included in ``spent``, kept apart so reconciliation can check it.
    opening_spent = models.DecimalField(**MONEY, default=ZERO)
    soft_alert_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="one_window_per_period")]
        ordering = ["-period_start"]

    def __str__(self) -> str:
        return (
            f"{self.budget}, from {self.period_start:%Y-%m-%d}: spent {usd(self.spent)}, reserved {usd(self.reserved)}"
        )


class ReservationStatus(models.TextChoices):
    HELD = "held"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class Reservation(models.Model):
    """Worst-case cost held against every applicable budget before work runs."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="reservations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    estimate = models.DecimalField(**MONEY)
    actual = models.DecimalField(**MONEY, null=True, blank=True)
    status = models.CharField(max_length=16, choices=ReservationStatus.choices, default=ReservationStatus.HELD)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    windows = models.ManyToManyField(BudgetWindow, related_name="reservations", blank=True)
    # The job whose work spends under this hold: its heartbeat extends the hold, its end settles it.
    job = models.ForeignKey(
        "core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="reservations"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"reservation #{self.pk} of {usd(self.estimate)} ({self.status})"


class ProfileSource(models.TextChoices):
    MEASURED = "measured", "measured when the worker started"
    LEDGER = "ledger", "refreshed from the worker's ledger rows"


class WorkerProfile(models.Model):
    """How fast one worker runs one model, on which device: what device-time reservations are sized from.

    Written by the worker itself (apps.costs.services.profiles); ``last_seen`` is its heartbeat,
    and profiles not seen for PARSIMONY_WORKER_PROFILE_TTL_S are ignored (apps.costs.cost_model).
    """

    hostname = models.CharField(max_length=255, help_text="The worker (Celery node name, or host:pid in-process)")
    queues = models.CharField(max_length=255, help_text="Comma-separated queues the worker consumes")
    device = models.CharField(max_length=16, help_text="cpu or cuda")
    model_name = models.CharField(max_length=200, help_text="The price book's name for the model")
    prefill_tps = models.FloatField(help_text="Prompt tokens read per second")
    decode_tps = models.FloatField(help_text="Tokens generated per second (0 for embedders)")
    overhead_s = models.FloatField(help_text="Seconds per call beyond the per-token time")
    source = models.CharField(max_length=16, choices=ProfileSource.choices, default=ProfileSource.MEASURED)
    samples = models.PositiveIntegerField(default=0, help_text="Ledger rows the last refit used")
    measured_at = models.DateTimeField()
    # When the worker last measured the model itself (its start): a refit learns only from calls since
    # then (a restarted worker, maybe on other hardware, does not inherit its past).
    calibrated_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["model_name", "hostname"]
        constraints = [
            models.UniqueConstraint(fields=["hostname", "model_name"], name="one_profile_per_worker_and_model")
        ]

    def __str__(self) -> str:
        return f"{self.hostname} {self.model_name} on {self.device}"

    @property
    def queue_list(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]


class DegradationPolicy(models.Model):
    """Budget-aware degradation (docs/cascades.md): as a budget fills, answer more cheaply instead of refusing.

    Checked before a query's hold: the share used of the most-used budget the request counts against
    (spent + reserved over the hard limit) picks the rule with the highest ``above_percent`` it has
    reached. A key's policy replaces its team's (``api_key`` empty: the team's). Rules (validated by
    ``apps.costs.degradation_rules.degradation_rules_problem``): ``{"above_percent": 80, "top_k_cap": 3,
    "max_tiers": 2, "extractive_only": false}`` — fewer passages, a cascade's first tiers only, or the
    extractive answer (no generation).
    """

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="degradation_policies")
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="degradation_policies",
        help_text="Empty: the team's policy (a key's own policy replaces it for that key)",
    )
    rules = models.JSONField(
        default=list,
        help_text='A list of {"above_percent": 80, "top_k_cap": 3, "max_tiers": 2, "extractive_only": false}; '
        "the highest threshold reached applies",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "api_key"]
        verbose_name_plural = "degradation policies"
        constraints = [
            models.UniqueConstraint(fields=["team", "api_key"], name="one_degradation_policy_per_key"),
            models.UniqueConstraint(fields=["team"], condition=Q(api_key=None), name="one_team_degradation_policy"),
        ]

    def __str__(self) -> str:
        return f"{self.team}: degradation policy{f' for key {self.api_key}' if self.api_key_id else ''}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from apps.costs.degradation_rules import degradation_rules_problem

        problem = degradation_rules_problem(self.rules)
        if problem:
            raise ValidationError({"rules": problem})
        if self.api_key_id and self.api_key.team_id != self.team_id:
            raise ValidationError({"api_key": "that key belongs to another team"})
