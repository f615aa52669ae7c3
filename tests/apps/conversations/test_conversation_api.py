"""Conversations over REST: the caller's own threads listed, read with turns and cost, deleted (the turns
stay in the history and ledger); another member's or another team's thread is 404; scopes enforced."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.accounts.models import Role
from apps.accounts.services import membership_set
from apps.conversations.models import Conversation
from apps.costs.models import UsageRecord
from apps.rag.models import QueryRun, QueryStatus

pytestmark = pytest.mark.django_db


def _thread(team, user, title, questions):
    conversation = Conversation.objects.create(team=team, user=user, title=title)
    runs = []
    for question in questions:
        run = QueryRun.objects.create(team=team, user=user, question=question, answer=f"about {question}",
                                      status=QueryStatus.SUCCEEDED, finish_reason="stop", conversation=conversation)
        UsageRecord.objects.create(team=team, user=user, stage="generate", model_name="m", query_run_id=run.pk,
                                   prompt_tokens=10, completion_tokens=2, cost=Decimal("0.0000012345"))
        runs.append(run)
    return conversation, runs


@pytest.fixture
def threads(team_a, team_b, alice, bob, make_user):
    carol = make_user("carol", email="carol@example.com")
    membership_set(team=team_a, user=carol, role=Role.MEMBER)
    mine, runs = _thread(team_a, alice, "Zebras", ["What are zebras?", "Where do they live?"])
    older, _ = _thread(team_a, alice, "Lions", ["What do lions eat?"])
    Conversation.objects.filter(pk=older.pk).update(updated_at=mine.updated_at.replace(year=2020))
    carols, _ = _thread(team_a, carol, "Carol's", ["A private question?"])
    bobs, _ = _thread(team_b, bob, "Bob's", ["Another team's question?"])
    return {"mine": mine, "runs": runs, "older": older, "carols": carols, "bobs": bobs, "carol": carol}


def _as(api_client, key):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return api_client


def test_a_key_lists_and_reads_its_creator_s_own_conversations(api_client, team_a, alice, make_api_key, threads):
    api = _as(api_client, make_api_key(team_a, scopes=["read"], user=alice))
    listed = api.get("/api/v1/conversations").json()
    assert listed["count"] == 2
    assert [(c["id"], c["title"], c["turn_count"]) for c in listed["results"]] == [
        (threads["mine"].pk, "Zebras", 2), (threads["older"].pk, "Lions", 1)]
    one = api.get(f"/api/v1/conversations/{threads['mine'].pk}").json()
    assert one["cost"] == "0.0000024690" and one["turn_count"] == 2
    assert [(t["id"], t["question"], t["status"]) for t in one["turns"]] == [
        (threads["runs"][0].pk, "What are zebras?", "succeeded"), (threads["runs"][1].pk, "Where do they live?",
                                                                   "succeeded")]


def test_another_member_s_or_team_s_thread_is_not_found(api_client, team_a, alice, make_api_key, threads):
    api = _as(api_client, make_api_key(team_a, scopes=["read", "query"], user=alice))
    for other in (threads["carols"], threads["bobs"]):
        assert api.get(f"/api/v1/conversations/{other.pk}").status_code == 404
        assert api.delete(f"/api/v1/conversations/{other.pk}").status_code == 404
    assert Conversation.objects.filter(pk__in=[threads["carols"].pk, threads["bobs"].pk]).count() == 2
    titles = [c["title"] for c in api.get("/api/v1/conversations").json()["results"]]
    assert "Carol's" not in titles and "Bob's" not in titles


def test_deleting_needs_query_and_keeps_the_turns_and_their_ledger(api_client, team_a, alice, make_api_key, threads):
    mine = threads["mine"]
    reader = _as(api_client, make_api_key(team_a, scopes=["read"], user=alice))
    assert reader.delete(f"/api/v1/conversations/{mine.pk}").status_code == 403
    asker = _as(api_client, make_api_key(team_a, scopes=["query"], user=alice))
    assert asker.delete(f"/api/v1/conversations/{mine.pk}").status_code == 204
    assert not Conversation.objects.filter(pk=mine.pk).exists()
    assert QueryRun.objects.filter(pk__in=[r.pk for r in threads["runs"]], conversation=None).count() == 2
    assert UsageRecord.objects.filter(query_run_id__in=[r.pk for r in threads["runs"]]).count() == 2
    assert asker.get(f"/api/v1/conversations/{mine.pk}").status_code == 404


def test_an_ingest_only_key_or_an_orphaned_key_sees_none(api_client, team_a, alice, make_api_key, threads):
    ingest = _as(api_client, make_api_key(team_a, scopes=["ingest"], user=alice))
    assert ingest.get("/api/v1/conversations").status_code == 403
    orphan = _as(api_client, make_api_key(team_a, scopes=["read"], user=None))
    assert orphan.get("/api/v1/conversations").json()["count"] == 0
    assert orphan.get(f"/api/v1/conversations/{threads['mine'].pk}").status_code == 404


def test_a_browser_session_reads_its_user_s_threads(client, alice, threads):
    client.force_login(alice)
    listed = client.get("/api/v1/conversations").json()
    assert {c["title"] for c in listed["results"]} == {"Zebras", "Lions"}
