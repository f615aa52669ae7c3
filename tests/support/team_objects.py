"""One object of every team-owned kind, made fast (ORM rows, no model work) for the isolation sweep and
the query-count tests. Every text field a page or an answer could show carries MARK, so a leak of
any of them is a substring search; a model with a TEAM_FIELD and no factory here fails
tests/apps/api/test_isolation_sweep.py, so a new kind cannot be left out of the sweep."""

from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.accounts.models import ApiKey, Invitation, Membership, Role, Team
from apps.accounts.services import api_key_create, membership_set
from apps.agents.models import Agent, AgentRun, AgentRunStatus, Tool
from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, TeamCacheSettings
from apps.bulk.models import BulkJob, BulkRow
from apps.conversations.models import Conversation
from apps.core.models import Job, JobStatus
from apps.corpora.models import Chunk, Corpus, Document, DocumentStatus
from apps.costs.models import Budget, BudgetPeriod, DegradationPolicy, ModelEndpoint, Reservation, UsageRecord
from apps.evaluations.models import EvalRow, EvalRun, EvalSet
from apps.rag.models import Pipeline, QueryRun, QueryStatus

MARK = "zqxbleak"
# A budget has no text of its own: its limit is the marker (the web and API print it).
BUDGET_MARK = "987654"


def _endpoint() -> ModelEndpoint:
    # A transactional test flushes the migrations' seed rows: put the defaults back (idempotent).
    from apps.costs.defaults import ensure_default_models

    ensure_default_models()
    return ModelEndpoint.objects.get(team=None, name="smollm2-135m-instruct")


class TeamObjects:
    """Factories by kind name; each returns a new object owned by `team` (i numbers them)."""

    def __init__(self, team: Team, mark: str = MARK) -> None:
        self.team = team
        self.mark = mark
        self._parents: dict[str, object] = {}

    def _parent(self, kind: str):
        if kind not in self._parents:
            self._parents[kind] = getattr(self, kind)(0)
        return self._parents[kind]

    def team_(self, i: int) -> Team:  # the team itself (TEAM_FIELD "pk"): never addressed by id in a URL
        return self.team

    def corpus(self, i: int) -> Corpus:
        return Corpus.objects.create(team=self.team, name=f"{self.mark}-corpus-{i}", description=self.mark)

    def document(self, i: int) -> Document:
        document = Document.objects.create(
            corpus=self._parent("corpus"), title=f"{self.mark} title {i}", filename=f"{self.mark}-{i}.txt",
            sha256=secrets.token_hex(32), status=DocumentStatus.READY, size=10, token_count=5,
        )
        Chunk.objects.create(document=document, ordinal=0, text=f"{self.mark} chunk text", token_count=3)
        return document

    def chunk(self, i: int) -> Chunk:
        return self.document(i).chunks.get()

    def pipeline(self, i: int) -> Pipeline:
        pipeline = Pipeline.objects.create(
            team=self.team, name=f"{self.mark}-pipeline-{i}", description=self.mark, model_endpoint=_endpoint(),
            fixed_context=f"{self.mark} fixed context",
        )
        pipeline.corpora.add(self._parent("corpus"))
        return pipeline

    def query_run(self, i: int) -> QueryRun:
        return QueryRun.objects.create(
            team=self.team, pipeline=self._parent("pipeline"), question=f"{self.mark} question {i}",
            answer=f"{self.mark} answer", status=QueryStatus.SUCCEEDED, cost=Decimal("0.0001"),
            finished_at=timezone.now(),
        )

    def job(self, i: int) -> Job:
        return Job.objects.create(
            team=self.team, kind="ingest", status=JobStatus.RUNNING, message=f"{self.mark} job {i}",
            params={"note": self.mark}, started_at=timezone.now(), heartbeat_at=timezone.now(),
        )

    def agent(self, i: int) -> Agent:
        return Agent.objects.create(
            team=self.team, name=f"{self.mark}-agent-{i}", description=self.mark, model_endpoint=_endpoint(),
            system_prompt=self.mark,
        )

    def agent_run(self, i: int) -> AgentRun:
        return AgentRun.objects.create(
            team=self.team, agent=self._parent("agent"), request=f"{self.mark} request {i}",
            answer=f"{self.mark} answer", status=AgentRunStatus.SUCCEEDED, finished_at=timezone.now(),
        )

    def tool(self, i: int) -> Tool:
        return Tool.objects.create(
            team=self.team, name=f"{self.mark}_tool_{i}", description=f"{self.mark} tool", kind="python",
            config={"callable": "calculator"},
        )

    def budget(self, i: int) -> Budget:
        # One per (scope, period) is what the product makes; a day and a week budget and then user budgets.
        periods = [p for p, _ in BudgetPeriod.choices]
        if i < len(periods):
            return Budget.objects.create(team=self.team, period=periods[i], hard_limit=Decimal(f"{BUDGET_MARK}.{i}"))
        user = self.membership(i).user
        return Budget.objects.create(
            team=self.team, scope="user", user=user, hard_limit=Decimal(f"{BUDGET_MARK}.{i}")
        )

    def api_key(self, i: int) -> ApiKey:
        return api_key_create(team=self.team, name=f"{self.mark}-key-{i}", scopes=["read"]).api_key

    def membership(self, i: int) -> Membership:
        # No password: hashing one takes ~0.4 s on this machine, and these users never sign in.
        user = get_user_model().objects.create(username=f"{self.mark}-user-{self.team.pk}-{i}-{secrets.token_hex(3)}")
        return membership_set(team=self.team, user=user, role=Role.MEMBER)

    def invitation(self, i: int) -> Invitation:
        return Invitation.objects.create(
            team=self.team, note=f"{self.mark} invitee {i}", nonce_hash=secrets.token_hex(32),
            expires_at=timezone.now() + timedelta(days=1),
        )

    def usage_record(self, i: int) -> UsageRecord:
        return UsageRecord.objects.create(
            team=self.team, stage="generate", model_name=f"{self.mark}-model",
            pipeline_name=f"{self.mark}-pipeline-{i}", prompt_tokens=10, completion_tokens=2, cost=Decimal("0.0123"),
        )

    def model_endpoint(self, i: int) -> ModelEndpoint:
        return ModelEndpoint.objects.create(
            team=self.team, name=f"{self.mark}-endpoint-{i}", kind="openai", base_url="http://127.0.0.1:9/v1",
            remote_model=self.mark, price_name="local/smollm2-135m",
        )

    def reservation(self, i: int) -> Reservation:
        return Reservation.objects.create(
            team=self.team, description=self.mark, estimate=Decimal("0.01"), status="released",
            expires_at=timezone.now(),
        )

    def eval_set(self, i: int) -> EvalSet:
        return EvalSet.objects.create(
            team=self.team, name=f"{self.mark}-set-{i}", description=self.mark, filename=f"{self.mark}.jsonl",
            items=[{"id": f"{self.mark}-{i}", "question": f"{self.mark} question", "answers": [self.mark]}],
        )

    def eval_run(self, i: int) -> EvalRun:
        run = EvalRun.objects.create(
            team=self.team, eval_set=self._parent("eval_set"), pipeline_names=[f"{self.mark}-pipeline-0"],
            status=JobStatus.SUCCEEDED, cost=Decimal("0.0001"), finished_at=timezone.now(),
        )
        EvalRow.objects.create(
            run=run, pipeline_name=f"{self.mark}-pipeline-0", item_id=f"{self.mark}-{i}",
            question=f"{self.mark} question", gold=[self.mark], answer=f"{self.mark} answer", status="succeeded",
            contained=1.0, f1=1.0, exact_match=0.0, cost=Decimal("0.0001"), finished_at=timezone.now(),
        )
        return run

    def bulk_job(self, i: int) -> BulkJob:
        job = BulkJob.objects.create(
            team=self.team, pipeline=self._parent("pipeline"), filename=f"{self.mark}-{i}.csv", input_format="csv",
            status="succeeded", rows_total=1, rows_done=1, cost=Decimal("0.0001"), finished_at=timezone.now(),
        )
        BulkRow.objects.create(
            bulk_job=job, position=0, row_id=f"{self.mark}-{i}", question=f"{self.mark} question",
            gold=self.mark, status="succeeded", answer=f"{self.mark} answer",
        )
        return job

    def answer_cache_entry(self, i: int) -> AnswerCacheEntry:
        return AnswerCacheEntry.objects.create(
            team=self.team, pipeline=self._parent("pipeline"), key=f"{self.mark}{i}",
            question=f"{self.mark} question {i}", question_hash=secrets.token_hex(32), answer=f"{self.mark} answer",
        )

    def answer_cache_lookup(self, i: int) -> AnswerCacheLookup:
        return AnswerCacheLookup.objects.create(
            team=self.team, query_run=self.query_run(1000 + i), outcome="miss", key=f"{self.mark}{i}",
        )

    def team_cache_settings(self, i: int) -> TeamCacheSettings:
        return TeamCacheSettings.objects.get_or_create(team=self.team)[0]

    def conversation(self, i: int) -> Conversation:
        conversation = Conversation.objects.create(
            team=self.team, user=self._parent("membership").user, title=f"{self.mark} thread {i}"
        )
        run = self.query_run(2000 + i)
        QueryRun.objects.filter(pk=run.pk).update(conversation=conversation)
        return conversation

    def degradation_policy(self, i: int) -> DegradationPolicy:
        return DegradationPolicy.objects.create(
            team=self.team, api_key=self.api_key(i) if i else None, rules=[{"above_percent": 80, "top_k_cap": 3}],
        )


# Model -> factory name: every model with a TEAM_FIELD must be here (the sweep checks).
KIND_OF_MODEL = {
    Team: "team_", Corpus: "corpus", Document: "document", Chunk: "chunk", Pipeline: "pipeline",
    QueryRun: "query_run", Job: "job", Agent: "agent", AgentRun: "agent_run", Tool: "tool", Budget: "budget",
    ApiKey: "api_key", Membership: "membership", Invitation: "invitation", UsageRecord: "usage_record",
    ModelEndpoint: "model_endpoint", Reservation: "reservation", EvalSet: "eval_set", EvalRun: "eval_run",
    BulkJob: "bulk_job", AnswerCacheEntry: "answer_cache_entry", AnswerCacheLookup: "answer_cache_lookup",
    TeamCacheSettings: "team_cache_settings", DegradationPolicy: "degradation_policy", Conversation: "conversation",
}
