"""Every cost path reserves before it spends: a $0 hard budget refuses each one with the 402 naming the budget.

The triggers drive each path's real entry point (the REST API, the web pages, or the service
where the path has no view of its own) and are enumerated against ``COST_PATHS``: a new path
without a trigger here fails ``test_every_cost_path_has_a_trigger``. The positive tests check
that the new paths bill under one hold and settle it to the rows' sum, and that an agent run
holds one step at a time and stops cleanly when the next step does not fit.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Sum
from django.test import Client

from apps.agents.models import AgentRun, Tool
from apps.core.models import Job
from apps.corpora.models import Chunk, Document, DocumentStatus
from apps.costs.cost_paths import COST_PATHS
from apps.costs.models import BudgetWindow, ModelEndpoint, Reservation, ReservationStatus, UsageRecord
from apps.costs.services import BudgetExceeded, LedgerContext, budget_save
from apps.rag.models import QueryRun
from tests.apps.agents.conftest import area_script, script  # noqa: F401  (the scripted model fixture)
from tests.apps.corpora import conftest as corpora_fixtures

pytestmark = pytest.mark.django_db

# The corpora tests' fixtures: a fresh DATA_ROOT for every test (autouse) and the team's corpus.
_data_root = corpora_fixtures._data_root
corpus = corpora_fixtures.corpus

TEXT = "Zebras are African equines with black-and-white stripes. They live in herds on the savanna."


@pytest.fixture
def api(team_a, alice, make_api_key, api_client):
    key = make_api_key(team_a, scopes=["read", "query", "ingest", "admin"], user=alice)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


@pytest.fixture
def web(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def echo_model(monkeypatch):
    """Model calls run the engine's EchoTarget (no model is loaded)."""
    from apps.costs import metering
    from workers.runtime.meter import EchoTarget

    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(reply="forty"))


def _uploads_stored(settings) -> list:
    folder = settings.DATA_ROOT / "uploads"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --------------------------------------------------------------------------- the triggers
# Each drives one path's entry point for team A and returns (HTTP status, text) or raises BudgetExceeded.


def _ingest(ctx) -> tuple[int, str]:
    upload = SimpleUploadedFile("zebra.txt", TEXT.encode(), content_type="text/plain")
    response = ctx["api"].post(f"/api/v1/corpora/{ctx['corpus'].pk}/documents", {"file": upload}, format="multipart")
    assert not Document.objects.exists() and not _uploads_stored(ctx["settings"])
    return response.status_code, response.content.decode()


def _ready_document(corpus) -> Document:
    """A ready document with one chunk, written directly (no embedding is billed making it)."""
    document = Document.objects.create(corpus=corpus, filename="a.txt", status=DocumentStatus.READY, sha256="a")
    Chunk.objects.create(document=document, ordinal=0, text=TEXT, token_count=20, vector_id=1)
    return document


def _index_rebuild(ctx) -> tuple[int, str]:
    from apps.corpora.services import corpus_index_rebuild_start

    _ready_document(ctx["corpus"])
    corpus_index_rebuild_start(corpus=ctx["corpus"], user=ctx["alice"])
    raise AssertionError("the rebuild was not refused")


def _search_ui(ctx) -> tuple[int, str]:
    _ready_document(ctx["corpus"])  # the page offers the search once the corpus has documents
    response = ctx["web"].get(f"/corpora/{ctx['corpus'].pk}/", {"q": "zebra stripes"})
    return response.status_code, html.unescape(response.content.decode())


def _search_api(ctx) -> tuple[int, str]:
    response = ctx["api"].post(
        f"/api/v1/corpora/{ctx['corpus'].pk}/search", {"query": "zebra stripes"}, format="json"
    )
    return response.status_code, response.content.decode()


def _embeddings_api(ctx) -> tuple[int, str]:
    response = ctx["api"].post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": TEXT}, format="json")
    return response.status_code, response.content.decode()


def _tool_index(ctx) -> tuple[int, str]:
    response = ctx["api"].post(
        "/api/v1/tools",
        {"name": "rectangle_area", "description": "The area of a rectangle from its length and width.",
         "config": {"callable": "area_rectangle"}},
        format="json",
    )
    assert not Tool.objects.filter(team=ctx["team"]).exists()
    return response.status_code, response.content.decode()


def _tool_search(ctx) -> tuple[int, str]:
    response = ctx["web"].get("/agents/tools/", {"q": "area of a rectangle"})
    return response.status_code, html.unescape(response.content.decode())


def _query(ctx) -> tuple[int, str]:
    from apps.rag.services import pipeline_save

    pipeline_save(team=ctx["team"], name="plain", model_endpoint="smollm2-135m-instruct", retriever="none")
    response = ctx["api"].post("/api/v1/queries", {"pipeline": "plain", "question": "Why stripes?"}, format="json")
    assert not QueryRun.objects.exists()
    return response.status_code, response.content.decode()


def _kv_prefill(ctx) -> tuple[int, str]:
    from apps.rag.services import pipeline_save

    pipeline = pipeline_save(
        team=ctx["team"], name="handbook", model_endpoint="smollm2-135m-instruct", fixed_context=TEXT * 20,
        attention_backend="squeezed", attention_options={"keep_fraction": 0.2},
    )
    response = ctx["api"].post(f"/api/v1/pipelines/{pipeline.pk}/fixed-context/prefill", format="json")
    return response.status_code, response.content.decode()


def _agent_step(ctx) -> tuple[int, str]:
    from apps.agents.services import agent_save

    agent_save(team=ctx["team"], name="calc", model_endpoint="smollm2-135m-instruct")
    response = ctx["api"].post("/api/v1/agent-runs", {"agent": "calc", "request": "Area of 8 by 5?"}, format="json")
    assert not AgentRun.objects.exists()
    return response.status_code, response.content.decode()


def _model_call(ctx) -> tuple[int, str]:
    from apps.costs.metering import model_call

    ctx["request"].getfixturevalue("echo_model")
    model_call(
        endpoint=ModelEndpoint.objects.get(team=None, name="smollm2-135m-instruct"),
        messages=[{"role": "user", "content": "Why stripes?"}],
        context=LedgerContext(team=ctx["team"], user=ctx["alice"]),
    )
    raise AssertionError("the model call was not refused")


def _shadow_baseline(ctx) -> tuple[int, str]:
    # The operator account pays for shadow baselines: here it is the team whose budget is $0.
    import logging

    from apps.rag.services import pipeline_save
    from apps.rag.shadow_run import shadow_baseline_execute

    ctx["settings"].PARSIMONY_OPERATOR_TEAM = ctx["team"].slug
    pipeline = pipeline_save(team=ctx["team"], name="plain", model_endpoint="smollm2-135m-instruct",
                             corpora=[ctx["corpus"]])
    run = QueryRun.objects.create(team=ctx["team"], pipeline=pipeline, endpoint=pipeline.model_endpoint,
                                  question="Why stripes?", status="succeeded", max_output_tokens=16)
    caplog = ctx["request"].getfixturevalue("caplog")
    with caplog.at_level(logging.INFO, logger="apps.rag.shadow_run"):
        assert shadow_baseline_execute(query_run_id=run.pk) is None
    run.refresh_from_db()
    assert run.measured_baseline_cost is None
    refused = [r.getMessage() for r in caplog.records if "refused by the operator's budget" in r.getMessage()]
    assert refused, "the shadow baseline was not refused"
    return 402, refused[0]


def _evaluation(ctx) -> tuple[int, str]:
    from apps.evaluations.models import EvalRun
    from apps.evaluations.services import eval_set_upload
    from apps.rag.services import pipeline_save

    pipeline_save(team=ctx["team"], name="plain", model_endpoint="smollm2-135m-instruct", retriever="none")
    eval_set_upload(team=ctx["team"], name="zebras", filename="zebras.jsonl",
                    data=b'{"question": "Why stripes?", "answers": ["camouflage"]}')
    response = ctx["api"].post("/api/v1/evaluations", {"eval_set": "zebras", "pipelines": ["plain"]}, format="json")
    assert not EvalRun.objects.exists() and not QueryRun.objects.exists()
    return response.status_code, response.content.decode()


def _bulk(ctx) -> tuple[int, str]:
    from apps.bulk.models import BulkJob
    from apps.rag.services import pipeline_save

    pipeline_save(team=ctx["team"], name="plain", model_endpoint="smollm2-135m-instruct", corpora=[ctx["corpus"]])
    upload = SimpleUploadedFile("q.csv", b"question\nWhy stripes?\n", content_type="text/csv")
    response = ctx["api"].post("/api/v1/bulk-jobs", {"file": upload, "pipeline": "plain"}, format="multipart")
    assert not BulkJob.objects.exists()
    return response.status_code, response.content.decode()


TRIGGERS: dict[str, Callable] = {
    "ingest": _ingest,
    "index_rebuild": _index_rebuild,
    "search_ui": _search_ui,
    "search_api": _search_api,
    "embeddings_api": _embeddings_api,
    "tool_index": _tool_index,
    "tool_search": _tool_search,
    "query": _query,
    "kv_prefill": _kv_prefill,
    "agent_step": _agent_step,
    "model_call": _model_call,
    "shadow_baseline": _shadow_baseline,
    "evaluation": _evaluation,
    "bulk": _bulk,
}


def test_every_cost_path_has_a_trigger():
    assert set(TRIGGERS) == set(COST_PATHS)


@pytest.mark.parametrize("path", sorted(COST_PATHS))
def test_a_zero_budget_refuses_the_path_with_402_naming_the_budget(
    path, request, settings, team_a, alice, corpus, api, web
):
    from apps.costs.services.alerts import budget_describe

    budget = budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    ctx = {"team": team_a, "alice": alice, "corpus": corpus, "api": api, "web": web, "settings": settings,
           "request": request}
    jobs_before = Job.objects.count()
    try:
        status, text = TRIGGERS[path](ctx)
    except BudgetExceeded as exc:
        status, text = exc.http_status, exc.message
    assert status == 402, text[:2000]
    assert budget_describe(budget) in text
    assert not UsageRecord.objects.exists()
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()
    assert Job.objects.count() == jobs_before  # no orphan work
    for window in BudgetWindow.objects.filter(budget=budget):
        assert (window.spent, window.reserved) == (0, 0)


def test_a_refused_upload_in_the_web_ui_stores_nothing(settings, team_a, corpus, web):
    budget = budget_save(team=team_a, hard_limit=Decimal("0"), period="month")
    upload = SimpleUploadedFile("zebra.txt", TEXT.encode(), content_type="text/plain")
    response = web.post(f"/corpora/{corpus.pk}/upload/", {"files": [upload]})
    assert response.status_code == 402
    from apps.costs.services.alerts import budget_describe

    assert budget_describe(budget) in html.unescape(response.content.decode())
    assert not Document.objects.exists() and not Job.objects.exists() and not _uploads_stored(settings)


# --------------------------------------------------------------------------- positive: one hold, settled to its rows


def _settled_to_rows(rows) -> Reservation:
    """The rows share one reservation, settled to their sum; the window holds nothing back."""
    reservation_ids = set(rows.values_list("reservation_id", flat=True))
    assert len(reservation_ids) == 1 and None not in reservation_ids, reservation_ids
    reservation = Reservation.objects.get(pk=reservation_ids.pop())
    total = rows.aggregate(total=Sum("cost"))["total"]
    assert reservation.status == ReservationStatus.SETTLED
    assert reservation.actual == total > 0
    assert total <= reservation.estimate
    return reservation


@pytest.fixture
def budget(team_a):
    return budget_save(team=team_a, hard_limit=Decimal("100"), period="month")


def _window_matches_ledger(budget):
    window = BudgetWindow.objects.get(budget=budget)
    assert window.reserved == 0
    assert window.spent == UsageRecord.objects.filter(team=budget.team).aggregate(total=Sum("cost"))["total"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_upload_is_embedded_under_its_hold_and_settled_to_its_rows(budget, corpus, api):
    upload = SimpleUploadedFile("zebra.txt", TEXT.encode(), content_type="text/plain")
    response = api.post(f"/api/v1/corpora/{corpus.pk}/documents", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.json()
    assert Document.objects.get().status == DocumentStatus.READY
    job = Job.objects.get()
    assert job.params["reservation_id"]
    reservation = _settled_to_rows(UsageRecord.objects.filter(stage="embed"))
    assert reservation.pk == job.params["reservation_id"]
    _window_matches_ledger(budget)

    # A corpus search: reserved, one retrieve row, settled.
    UsageRecord.objects.all().delete()
    found = api.post(f"/api/v1/corpora/{corpus.pk}/search", {"query": "zebra stripes"}, format="json")
    assert found.status_code == 200 and found.json()["count"] >= 1
    _settled_to_rows(UsageRecord.objects.filter(stage="retrieve"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_team_tool_and_a_tool_search_are_billed_under_their_holds(budget, team_a, alice, web):
    from apps.agents.services import tool_create

    tool_create(team=team_a, name="rectangle_area", description="The area of a rectangle from its sides.",
                config={"callable": "area_rectangle"}, created_by=alice)
    _settled_to_rows(UsageRecord.objects.filter(stage="embed"))
    _window_matches_ledger(budget)

    UsageRecord.objects.all().delete()
    response = web.get("/agents/tools/", {"q": "area of a rectangle"})
    assert response.status_code == 200 and "rectangle_area" in response.content.decode()
    row = UsageRecord.objects.get(stage="retrieve")
    assert row.user == alice
    _settled_to_rows(UsageRecord.objects.filter(stage="retrieve"))


# --------------------------------------------------------------------------- agent runs: one hold per step


@pytest.fixture
def echo_priced_model(db):
    """The default local endpoint priced by output token ($1 each; input ~free, no device time): a step's
    bound is its output cap, what it costs is the words it wrote."""
    from datetime import UTC, datetime

    from apps.costs.services import price_set

    price_set(model_name="test/echo-agent", input_per_mtok=Decimal(1), output_per_mtok=Decimal(1_000_000),
              effective_from=datetime(2025, 1, 1, tzinfo=UTC))
    endpoint = ModelEndpoint.objects.get(team=None, name="smollm2-135m-instruct")
    endpoint.price_name = "test/echo-agent"
    endpoint.save()
    return endpoint


def _agent_run(team, user, agent):
    from apps.agents import services

    run = services.agent_run_start(team=team, agent=agent, request="Area of a rectangle 8 by 5?", user=user)
    run.refresh_from_db()
    return run


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_agent_run_holds_one_step_at_a_time_and_stops_when_the_next_does_not_fit(
    team_a, alice, make_user, echo_priced_model, script  # noqa: F811
):
    from apps.accounts.models import Role
    from apps.accounts.services import membership_set
    from apps.agents.services import agent_save, builtin_tools_load

    builtin_tools_load()
    agent = agent_save(team=team_a, name="calc", model_endpoint="smollm2-135m-instruct", similarity_threshold=0.3,
                       max_output_tokens=100)
    # A dry run, with no budget: three steps (decompose, the tool call, the answer), each its own hold.
    script.say(*area_script())
    dry = _agent_run(team_a, alice, agent)
    assert (dry.status, dry.finish_reason, dry.model_calls) == ("succeeded", "stop", 3), dry.error
    holds = list(Reservation.objects.filter(description__contains="agent calc step").order_by("pk"))
    assert [h.description[-6:] for h in holds] == ["step 1", "step 2", "step 3"]
    assert holds[0].pk == dry.reservation_id
    assert all(h.status == ReservationStatus.SETTLED for h in holds)
    step_cost = [UsageRecord.objects.filter(reservation=h).aggregate(total=Sum("cost"))["total"] for h in holds]
    assert sum(step_cost) == dry.cost
    assert all(cost <= h.estimate for cost, h in zip(step_cost, holds, strict=True))
    # A user budget that covers steps 1 and 2 but not a third: step 2 fits after step 1's spend. The
    # $0.50 spare absorbs the measured (tiny, varying) seconds of the search and tool rows; a step's
    # words cost dollars.
    limit = max(holds[0].estimate, step_cost[0] + holds[1].estimate) + Decimal("0.5")
    assert step_cost[0] + step_cost[1] + holds[2].estimate > limit + 1

    carol = make_user("carol")
    membership_set(team=team_a, user=carol, role=Role.MEMBER)
    user_budget = budget_save(team=team_a, scope="user", user=carol, hard_limit=limit, period="month")
    script.say(*area_script())
    run = _agent_run(team_a, carol, agent)
    assert run.status == "succeeded", run.error
    assert run.finish_reason == "budget"
    assert run.model_calls == 2
    assert run.answer.startswith("Stopped: the budget does not cover another step")
    assert run.cost == UsageRecord.objects.filter(agent_run_id=run.pk).aggregate(total=Sum("cost"))["total"]
    window = BudgetWindow.objects.get(budget=user_budget)
    assert window.spent == run.cost <= limit
    assert window.reserved == 0
    assert not Reservation.objects.filter(status=ReservationStatus.HELD).exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_embeddings_api_bills_under_its_hold(budget, api):
    response = api.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [TEXT, "stripes"]}, format="json")
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 2
    _settled_to_rows(UsageRecord.objects.filter(stage="embed"))
    _window_matches_ledger(budget)
