"""Bulk jobs through a provider's Batch API: prompts built here, one file and one batch sent to a fake
OpenAI-compatible server, polled until done, each row billed at the batch price with its saving against
the normal price; never submitted twice, never billed twice, cancelled with the job."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.bulk.models import BulkJob, BulkRow
from apps.bulk.provider_batch import ProviderWait, provider_batch_run
from apps.bulk.services import bulk_job_start
from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.costs.models import BudgetWindow, Reservation, Stage, UsageRecord
from apps.costs.pricing import MILLION
from apps.costs.reconciliation import ledger_reconcile
from apps.costs.services import budget_save, price_set
from apps.costs.services.endpoints import endpoint_save
from apps.rag.models import QueryRun
from apps.rag.services import pipeline_save
from tests.apps.rag.conftest import fake_search_hits
from tests.support.fake_openai_batch import FakeBatchServer

pytestmark = pytest.mark.django_db

PASSAGES = [("Eiffel Tower", "The Eiffel Tower in Paris was completed in 1889."),
            ("Paris", "Paris is the capital of France.")]
CSV = (b"id,question\nq1,When was the Eiffel Tower completed?\nq2,What is the capital of France?\n"
       b"q3,Where is it?\n")
PRICE = "test/batchy"
NORMAL_IN, NORMAL_OUT = Decimal("0.15"), Decimal("0.60")
BATCH_IN, BATCH_OUT = Decimal("0.075"), Decimal("0.30")
PROMPT, COMPLETION = 120, 7


def _fails_q3(line: dict) -> bool:
    return "Where is it?" in line["body"]["messages"][-1]["content"]


@pytest.fixture
def server():
    with FakeBatchServer(reply="It was completed in 1889 [1].", prompt_tokens=PROMPT, completion_tokens=COMPLETION,
                         fail_when=_fails_q3, polls_until_done=2) as fake:
        yield fake


@pytest.fixture
def pipeline(team_a, server, monkeypatch, settings, tmp_path, loopback_endpoints):
    from apps.corpora.services import corpus_create
    from apps.rag.question_runner import QueryHooks

    settings.DATA_ROOT = tmp_path
    fake_search_hits(monkeypatch, PASSAGES)
    # The quality check by token overlap alone: no embedding model loads (the endpoint is remote).
    monkeypatch.setattr(QueryHooks, "embed_for_quality", lambda self, texts: None)
    price_set(model_name=PRICE, input_per_mtok=NORMAL_IN, output_per_mtok=NORMAL_OUT,
              batch_input_per_mtok=BATCH_IN, batch_output_per_mtok=BATCH_OUT)
    endpoint_save(team=team_a, name="remote", base_url=server.base_url, model="gpt-4o-mini", api_key="sk-batch",
                  price_name=PRICE, context_window=16_000, max_output_tokens=64, batch_api=True)
    corpus = corpus_create(team=team_a, name="facts")
    return pipeline_save(team=team_a, name="facts", model_endpoint="remote", corpora=[corpus],
                         max_output_tokens=32, top_k=2)


def _start(team, user, pipeline, capture, execute: bool) -> BulkJob:
    with capture(execute=execute):
        bulk = bulk_job_start(team=team, pipeline=pipeline, data=CSV, filename="q.csv", user=user,
                              mode="provider_batch")
    bulk.refresh_from_db()
    return bulk


def _money(tokens_in: int, tokens_out: int, price_in: Decimal, price_out: Decimal) -> Decimal:
    return ((tokens_in * price_in + tokens_out * price_out) / MILLION).quantize(Decimal("0.0000000001"))


def test_a_provider_batch_job_is_submitted_once_and_each_row_billed_at_the_batch_price(
    team_a, alice, pipeline, server, django_capture_on_commit_callbacks
):
    budget_save(team=team_a, hard_limit=Decimal("10"), period="month")
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=True)
    # Polled twice (in_progress, then completed), waiting queued in between; one file, one batch.
    assert (server.uploads, server.creates) == (1, 1)
    assert bulk.status == "succeeded", bulk.error or bulk.job.error
    assert bulk.job.status == "succeeded"
    assert bulk.provider_status == "completed" and bulk.provider_batch_id == "batch_1"
    assert server.authorizations[0] == "Bearer sk-batch"
    lines = server.input_lines("batch_1")
    rows = list(bulk.rows.order_by("position"))
    assert [line["custom_id"] for line in lines] == [str(row.pk) for row in rows]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["model"] == "gpt-4o-mini"
    assert "The Eiffel Tower in Paris" in lines[0]["body"]["messages"][-1]["content"]  # retrieved here
    assert lines[0]["body"]["max_tokens"] == 32
    assert (bulk.rows_done, bulk.rows_failed) == (2, 1)

    # The failing row: failed with the provider's message, billed only its retrieval.
    failed = rows[2]
    assert failed.status == "failed" and "maximum context length" in failed.error
    assert failed.query_run.status == "failed"
    assert not UsageRecord.objects.filter(query_run_id=failed.query_run_id, stage=Stage.GENERATE).exists()

    one = _money(PROMPT, COMPLETION, BATCH_IN, BATCH_OUT)
    normal = _money(PROMPT, COMPLETION, NORMAL_IN, NORMAL_OUT)
    for row in rows[:2]:
        assert row.status == "done" and row.answer.startswith("It was completed in 1889")
        assert (row.prompt_tokens, row.completion_tokens) == (PROMPT, COMPLETION)
        generation = UsageRecord.objects.get(query_run_id=row.query_run_id, stage=Stage.GENERATE)
        assert generation.cost == one == Decimal("0.0000111")
        assert (generation.price_input_per_mtok, generation.price_output_per_mtok) == (BATCH_IN, BATCH_OUT)
        assert generation.reservation_id == bulk.reservation_id
        own = sum(r.cost for r in UsageRecord.objects.filter(query_run_id=row.query_run_id))
        run = row.query_run
        assert row.cost == own == run.cost
        # The saving against naive RAG at the normal price is the batch discount, exactly.
        assert run.savings == run.baseline_cost - run.cost == normal - one
    ledger = sum(r.cost for r in UsageRecord.objects.filter(reservation_id=bulk.reservation_id))
    assert sum(row.cost for row in rows) == ledger == bulk.cost
    assert bulk.provider_savings == 2 * (normal - one) == Decimal("0.0000222")
    assert bulk.savings == bulk.baseline_cost - bulk.cost
    reservation = Reservation.objects.get(pk=bulk.reservation_id)
    assert reservation.status == "settled" and reservation.actual == ledger
    window = BudgetWindow.objects.get()
    assert (window.reserved, window.spent) == (0, ledger)

    # The poll stage run again (a redelivery after it settled): nothing is sent or billed twice.
    before = UsageRecord.objects.count()
    BulkJob.objects.filter(pk=bulk.pk).update(status="running")
    again = provider_batch_run(bulk_job_id=bulk.pk)
    assert again.status == "succeeded" and (again.rows_done, again.rows_failed) == (2, 1)
    assert UsageRecord.objects.count() == before and (server.uploads, server.creates) == (1, 1)
    assert again.cost == ledger and QueryRun.objects.count() == 3


def test_a_worker_lost_between_upload_and_batch_id_resumes_without_a_second_batch(
    team_a, alice, pipeline, server, django_capture_on_commit_callbacks
):
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=False)
    wait = provider_batch_run(bulk_job_id=bulk.pk)
    assert isinstance(wait, ProviderWait) and wait.status == "in_progress" and wait.countdown > 0
    retrievals = UsageRecord.objects.filter(stage=Stage.RETRIEVE).count()
    assert retrievals == 3
    # As if the worker died after the provider made the batch but before its id was stored.
    BulkJob.objects.filter(pk=bulk.pk).update(provider_batch_id="", provider_status="")
    done = provider_batch_run(bulk_job_id=bulk.pk)
    assert (server.uploads, server.creates) == (1, 1)  # found the batch made on the stored file
    assert done.status == "succeeded" and done.provider_batch_id == "batch_1"
    assert UsageRecord.objects.filter(stage=Stage.RETRIEVE).count() == retrievals  # prepared rows kept
    assert UsageRecord.objects.filter(stage=Stage.GENERATE).count() == 2
    Job.objects.filter(pk=done.job_id).update(status="succeeded")


def test_cancelling_the_job_cancels_the_provider_batch(team_a, alice, pipeline, server,
                                                       django_capture_on_commit_callbacks):
    from apps.core.services import job_cancel

    server.polls_until_done = 100
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=False)
    assert isinstance(provider_batch_run(bulk_job_id=bulk.pk), ProviderWait)
    assert job_cancel(job=Job.objects.get(pk=bulk.job_id))
    bulk.refresh_from_db()
    assert server.cancels == 1 and bulk.provider_status == "cancelling"
    assert server.batches["batch_1"]["status"] == "cancelling"
    assert bulk.status == "cancelled"
    assert set(BulkRow.objects.filter(bulk_job=bulk).values_list("status", flat=True)) == {"pending"}
    assert set(QueryRun.objects.values_list("status", flat=True)) == {"failed"}
    assert not UsageRecord.objects.filter(stage=Stage.GENERATE).exists()
    reservation = Reservation.objects.get(pk=bulk.reservation_id)
    ledger = sum(r.cost for r in UsageRecord.objects.filter(reservation_id=bulk.reservation_id))
    assert reservation.status == "settled" and reservation.actual == ledger  # the retrievals only
    assert provider_batch_run(bulk_job_id=bulk.pk).status == "cancelled"  # a late poll does nothing
    assert server.cancels == 1


def test_what_the_provider_answered_before_a_cancel_took_effect_is_kept_and_billed(
    team_a, alice, pipeline, server, django_capture_on_commit_callbacks
):
    """The provider charges for the requests it finished before the cancel took effect: after the job is
    cancelled the batch is polled until it has ended, those rows are settled (answer, batch price) and their
    cost booked to the budget although the job's hold was settled at the cancel."""
    from apps.bulk.provider_batch import NOT_ANSWERED, provider_batch_after_end
    from apps.core.services import job_cancel

    budget_save(team=team_a, hard_limit=Decimal("10"), period="month")
    server.polls_until_done = 100
    server.answered_before_cancel = 2  # q1 and q2; q3 was not reached
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=False)
    assert isinstance(provider_batch_run(bulk_job_id=bulk.pk), ProviderWait)
    with django_capture_on_commit_callbacks(execute=True):  # the ending sends the after-end task
        assert job_cancel(job=Job.objects.get(pk=bulk.job_id))
    bulk.refresh_from_db()
    assert server.cancels == 1 and bulk.status == "cancelled" and bulk.provider_status == "cancelled"
    rows = list(bulk.rows.order_by("position"))
    one = _money(PROMPT, COMPLETION, BATCH_IN, BATCH_OUT)
    for row in rows[:2]:
        assert row.status == "done" and row.answer.startswith("It was completed in 1889")
        assert row.query_run.status == "succeeded" and row.query_run.cost == row.cost
        generation = UsageRecord.objects.get(query_run_id=row.query_run_id, stage=Stage.GENERATE)
        assert generation.cost == one and generation.reservation_id == bulk.reservation_id
    assert rows[2].status == "failed" and rows[2].error == NOT_ANSWERED
    assert not UsageRecord.objects.filter(stage=Stage.GENERATE).exclude(
        query_run_id__in=[r.query_run_id for r in rows[:2]]).exists()
    ledger = sum(r.cost for r in UsageRecord.objects.filter(reservation_id=bulk.reservation_id))
    retrievals = sum(r.cost for r in UsageRecord.objects.filter(stage=Stage.RETRIEVE))
    assert ledger == retrievals + 2 * one
    assert bulk.cost == ledger and (bulk.rows_done, bulk.rows_failed) == (2, 1)
    # The job's baseline and savings count the rows settled after the cancel (naive RAG at the normal price).
    assert bulk.baseline_cost == sum(row.query_run.baseline_cost for row in rows[:2]) > 0
    assert bulk.savings == bulk.baseline_cost - bulk.cost
    reservation = Reservation.objects.get(pk=bulk.reservation_id)
    assert reservation.status == "settled" and reservation.actual == ledger
    window = BudgetWindow.objects.get()
    assert (window.reserved, window.spent) == (0, ledger)
    assert ledger_reconcile() == []  # ledger, windows, reservations and runs agree

    # Run again (a redelivered task): nothing is billed or booked twice.
    before = UsageRecord.objects.count()
    again = provider_batch_after_end(bulk_job_id=bulk.pk)
    assert again.cost == ledger and UsageRecord.objects.count() == before
    window.refresh_from_db()
    assert window.spent == ledger


def test_a_cancel_that_the_provider_had_not_acted_on_yet_is_polled_again_later(
    team_a, alice, pipeline, server, django_capture_on_commit_callbacks
):
    from apps.bulk.provider_batch import provider_batch_after_end
    from apps.core.services import job_cancel

    server.polls_until_done = 100
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=False)
    assert isinstance(provider_batch_run(bulk_job_id=bulk.pk), ProviderWait)
    assert job_cancel(job=Job.objects.get(pk=bulk.job_id))  # its after-end task not run (no commit here)
    server.unavailable = 10  # every retrieval answers 503 (the client's own retries included)
    wait = provider_batch_after_end(bulk_job_id=bulk.pk)
    assert isinstance(wait, ProviderWait) and "unreachable" in wait.message
    server.unavailable = 0
    done = provider_batch_after_end(bulk_job_id=bulk.pk)  # cancelling -> cancelled, nothing answered
    assert done.provider_status == "cancelled" and done.rows_failed == 3 and done.rows_done == 0
    assert not UsageRecord.objects.filter(stage=Stage.GENERATE).exists()


def test_the_mode_is_refused_for_a_local_endpoint(team_a, alice, pipeline, django_capture_on_commit_callbacks):
    local = pipeline_save(team=team_a, name="local", model_endpoint="smollm2-135m-instruct",
                          corpora=list(pipeline.corpora.all()), max_output_tokens=12, top_k=2)
    with pytest.raises(ValidationFailed, match="local model") as error:
        bulk_job_start(team=team_a, pipeline=local, data=CSV, filename="q.csv", user=alice, mode="provider_batch")
    assert "mode" in error.value.detail["fields"]
    assert not BulkJob.objects.exists() and not Reservation.objects.exists()


def test_the_mode_is_refused_without_the_flag_a_batch_price_or_with_k_above_1(team_a, alice, pipeline):
    endpoint = pipeline.model_endpoint
    with pytest.raises(ValidationFailed, match="use batch_size 1"):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", user=alice, batch_size=2,
                       mode="provider_batch")
    with pytest.raises(ValidationFailed, match="unknown mode 'cheap'"):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", user=alice, mode="cheap")
    endpoint.batch_api = False
    endpoint.save()
    with pytest.raises(ValidationFailed, match="not marked as offering the provider Batch API"):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", user=alice, mode="provider_batch")
    endpoint.batch_api = True
    endpoint.save()
    price_set(model_name=PRICE, input_per_mtok=NORMAL_IN, output_per_mtok=NORMAL_OUT)  # a new price, no batch
    with pytest.raises(ValidationFailed, match="no batch price for 'test/batchy'"):
        bulk_job_start(team=team_a, pipeline=pipeline, data=CSV, filename="q.csv", user=alice, mode="provider_batch")
    assert not BulkJob.objects.exists()


# --------------------------------------------------------------------------- REST and the team pages


@pytest.fixture
def api(team_a, alice, make_api_key, api_client):
    key = make_api_key(team_a, scopes=["read", "query", "admin"], user=alice)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def _upload(api, pipeline_name: str, **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return api.post("/api/v1/bulk-jobs", {"file": SimpleUploadedFile("q.csv", CSV), "pipeline": pipeline_name,
                                          **fields}, format="multipart")


def test_rest_takes_the_mode_and_refuses_it_for_a_local_endpoint_with_a_clear_400(
    api, team_a, pipeline, server, django_capture_on_commit_callbacks
):
    pipeline_save(team=team_a, name="local", model_endpoint="smollm2-135m-instruct",
                  corpora=list(pipeline.corpora.all()), max_output_tokens=12, top_k=2)
    refused = _upload(api, "local", mode="provider_batch")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "cannot run as a provider batch" in error["message"] and "local model" in error["detail"]["fields"]["mode"]
    assert _upload(api, "facts", mode="cheap").status_code == 400
    assert not BulkJob.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(api, "facts", mode="provider_batch")
    assert response.status_code == 202, response.content
    body = api.get(f"/api/v1/bulk-jobs/{response.json()['id']}").json()
    assert body["mode"] == "provider_batch" and body["status"] == "succeeded"
    assert body["provider_batch_id"] == "batch_1" and body["provider_status"] == "completed"
    assert Decimal(body["provider_savings"]) == Decimal("0.0000222")


def test_an_endpoint_batch_flag_and_batch_prices_are_set_through_rest(api, pipeline):
    endpoint = pipeline.model_endpoint
    listed = api.get(f"/api/v1/model-endpoints/{endpoint.pk}").json()
    assert listed["batch_api"] is True and Decimal(listed["price"]["batch_input_per_mtok"]) == BATCH_IN
    off = api.patch(f"/api/v1/model-endpoints/{endpoint.pk}", {"batch_api": False}, format="json")
    assert off.status_code == 200, off.content
    assert off.json()["batch_api"] is False
    endpoint.refresh_from_db()
    assert endpoint.batch_api is False and endpoint.price_name == PRICE  # the rest kept
    half = api.patch(f"/api/v1/model-endpoints/{endpoint.pk}", {"input_per_mtok": "1", "output_per_mtok": "2",
                                                                "batch_input_per_mtok": "0.5"}, format="json")
    assert half.status_code == 400 and "both batch prices" in half.json()["error"]["message"]
    entered = api.patch(f"/api/v1/model-endpoints/{endpoint.pk}", {
        "input_per_mtok": "1", "output_per_mtok": "2", "batch_input_per_mtok": "0.5",
        "batch_output_per_mtok": "1", "batch_api": True}, format="json")
    assert entered.status_code == 200, entered.content
    price = entered.json()["price"]
    assert (Decimal(price["batch_input_per_mtok"]), Decimal(price["batch_output_per_mtok"])) == (Decimal("0.5"), 1)


def test_the_bulk_page_offers_the_mode_and_shows_why_it_is_refused(alice, team_a, pipeline):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    web = Client()
    web.force_login(alice)
    assert b"provider_batch" in web.get("/bulk/").content
    pipeline.model_endpoint.batch_api = False
    pipeline.model_endpoint.save()
    page = web.post("/bulk/new/", {"pipeline": pipeline.pk, "batch_size": 1, "mode": "provider_batch",
                                   "file": SimpleUploadedFile("q.csv", CSV)})
    assert page.status_code == 400
    assert b"not marked as offering the provider Batch API" in page.content
    assert not BulkJob.objects.exists()


def test_a_provider_that_cannot_be_reached_while_polling_is_polled_again_later(
    team_a, alice, pipeline, server, django_capture_on_commit_callbacks
):
    bulk = _start(team_a, alice, pipeline, django_capture_on_commit_callbacks, execute=False)
    server.unavailable = 10  # the submit's calls pass; every retrieval answers 503
    wait = provider_batch_run(bulk_job_id=bulk.pk)
    assert isinstance(wait, ProviderWait) and "unreachable" in wait.message
    bulk.refresh_from_db()
    assert bulk.status == "running" and bulk.provider_batch_id == "batch_1"
    server.unavailable = 0
    assert isinstance(provider_batch_run(bulk_job_id=bulk.pk), ProviderWait)  # in_progress
    done = provider_batch_run(bulk_job_id=bulk.pk)
    assert done.status == "succeeded" and (done.rows_done, done.rows_failed) == (2, 1)
    assert (server.uploads, server.creates) == (1, 1)
    Job.objects.filter(pk=done.job_id).update(status="succeeded")


def test_the_provider_client_keeps_to_the_network_policy(server):
    """A team endpoint's batch calls pass the same address guard as its chat calls: loopback is refused
    unless the operator allows it, and the refusal is final (not polled again)."""
    from workers.runtime import openai_batch
    from workers.runtime.net_guard import NetworkPolicy
    from workers.runtime.openai_compat import EndpointError, OpenAICompatConfig

    config = OpenAICompatConfig(base_url=server.base_url, model="gpt-4o-mini", api_key="sk-batch",
                                network_policy=NetworkPolicy())
    with pytest.raises(EndpointError) as refused:
        openai_batch.file_upload(config, data=b"{}\n", filename="batch.jsonl")
    assert refused.value.blocked and not refused.value.retryable
    assert "network policy" in str(refused.value)
    allowed = OpenAICompatConfig(base_url=server.base_url, model="gpt-4o-mini", api_key="sk-batch",
                                 network_policy=NetworkPolicy.from_entries(["127.0.0.1"]))
    assert openai_batch.file_upload(allowed, data=b"{}\n", filename="batch.jsonl")
