"""Tools (a team's or global), the http allow-list, agents, and agent runs with their steps and cost."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from apps.costs.models import MONEY, ZERO

# OpenAI function names: letters, digits, _ and -, at most 64.
TOOL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"
tool_name_validator = RegexValidator(
    TOOL_NAME_PATTERN, "a tool name starts with a letter and holds letters, digits, _ or - (at most 64)"
)


class ToolKind(models.TextChoices):
    PYTHON = "python", "python (a registered built-in function)"
    HTTP = "http", "http (an allow-listed URL)"
    RETRIEVAL = "retrieval", "retrieval (search a corpus)"


class Tool(models.Model):
    """One tool in a library. team=None: a global tool every team's agents can find."""

    TEAM_FIELD = "team"

    team = models.ForeignKey(
        "accounts.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="tools",
        help_text="Empty: a global tool, visible to every team",
    )
    name = models.CharField(max_length=64, validators=[tool_name_validator], help_text="What the model calls it")
    description = models.TextField(help_text="What it does: the library search embeds 'name: description'")
    parameters = models.JSONField(default=dict, blank=True, help_text="A JSON schema of type object")
    kind = models.CharField(max_length=16, choices=ToolKind.choices, default=ToolKind.PYTHON)
    config = models.JSONField(
        default=dict, blank=True,
        help_text='python: {"callable": name}; http: {"url": ..., "method": "GET"|"POST"}; '
        'retrieval: {"corpus_id": id, "k": 3}',
    )
    examples = models.JSONField(
        default=list, blank=True, help_text="Example requests this tool serves: blended into its search vector"
    )
    enabled = models.BooleanField(default=True, help_text="Disabled tools are not indexed and never offered")
    version = models.PositiveIntegerField(default=1, help_text="Incremented on every change")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="tool_name_unique_per_team"),
            models.UniqueConstraint(fields=["name"], condition=Q(team=None), name="global_tool_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({'global' if self.team_id is None else self.team})"

    @property
    def is_global(self) -> bool:
        return self.team_id is None


class HttpAllowedHost(models.Model):
    """A host that `http` tools may call (managed in the admin). "*.example.com" allows its subdomains."""

    host = models.CharField(max_length=255, unique=True)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["host"]
        verbose_name = "allowed http host"

    def __str__(self) -> str:
        return self.host


class Agent(models.Model):
    """A model plus the tool library: decompose, search, offer only what was found. Also a `model` name."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="agents")
    name = models.SlugField(max_length=120, help_text="Also the `model` name on the OpenAI-compatible API")
    description = models.CharField(max_length=500, blank=True)
    model_endpoint = models.ForeignKey("costs.ModelEndpoint", on_delete=models.PROTECT, related_name="agents")
    system_prompt = models.TextField(blank=True)
    top_k = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Tools found per search; each one offered costs its definition's tokens in every prompt",
    )
    similarity_threshold = models.FloatField(
        default=0.35, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)],
        help_text="Cosine score a tool needs to be offered; below it for every tool, the subtask is decomposed",
    )
    max_depth = models.PositiveSmallIntegerField(
        default=1, validators=[MaxValueValidator(5)], help_text="How often a subtask without tools is split further"
    )
    step_limit = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Most model calls per run; the budget reserves this many worst-case calls",
    )
    tool_timeout_s = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(600)], help_text="Per tool call"
    )
    max_output_tokens = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(1), MaxValueValidator(32_768)], help_text="Per model call"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="agent_name_unique_per_team")]

    def __str__(self) -> str:
        return self.name


class AgentRunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ToolOutcome(models.TextChoices):
    """What a finished run did with its tools (``workers.agent.loop.TOOL_OUTCOMES``). "Succeeded" keeps
    meaning the run finished; a run labelled ``tool_failed`` or ``no_tool_called`` is not a plain success."""

    TOOL_FAILED = "tool_failed", "a tool failed"
    NO_TOOL_CALLED = "no_tool_called", "needed a tool, called none"
    TOOLS_CALLED = "tools_called", "tools called"
    NO_TOOLS_FOUND = "no_tools_found", "no tool found"


class AgentRun(models.Model):
    """One request to an agent: its steps (as they happen), tools offered and called, tokens and cost."""

    TEAM_FIELD = "team"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="agent_runs")
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True)
    job = models.OneToOneField("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="agent_run")
    reservation = models.ForeignKey("costs.Reservation", on_delete=models.SET_NULL, null=True, blank=True)
    request = models.TextField()
    messages = models.JSONField(default=list, blank=True, help_text="The conversation (OpenAI-compatible calls)")
    status = models.CharField(
        max_length=16, choices=AgentRunStatus.choices, default=AgentRunStatus.QUEUED, db_index=True
    )
    answer = models.TextField(blank=True, help_text="Grows while the answer streams")
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    steps = models.JSONField(default=list, blank=True)
    tools_offered = models.JSONField(default=list, blank=True)
    tools_called = models.JSONField(default=list, blank=True)
    tool_outcome = models.CharField(
        max_length=16, choices=ToolOutcome.choices, blank=True, db_index=True,
        help_text="What the run did with its tools; empty until it ends",
    )
    model_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=ZERO)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "-created_at"])]

    def __str__(self) -> str:
        return f"agent run #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (AgentRunStatus.SUCCEEDED, AgentRunStatus.FAILED)

    @property
    def tool_outcome_warns(self) -> bool:
        """Whether the tool outcome must be shown beside the status: the run did not use its tools as planned."""
        return self.tool_outcome in (ToolOutcome.TOOL_FAILED, ToolOutcome.NO_TOOL_CALLED)
