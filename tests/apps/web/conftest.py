"""Web fixtures: a temporary DATA_ROOT, logged-in clients per role, team A's objects, the agents' fixtures."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.accounts.models import Role
from apps.accounts.services import membership_set

# The agent pages use the agents area's fixtures: the built-in tools, a scripted model, an agent factory.
from tests.apps.agents.conftest import builtin_tools, make_agent, script  # noqa: F401


@pytest.fixture(autouse=True)
def _data_root(settings, tmp_path):
    settings.DATA_ROOT = tmp_path / "data"
    settings.DATA_ROOT.mkdir()
    from indexes import corpus_store

    corpus_store.cache_clear()
    yield
    corpus_store.cache_clear()


def _client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def member(team_a, make_user):
    user = make_user("mike")
    membership_set(team=team_a, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def admin_user(team_a, make_user):
    user = make_user("ada")
    membership_set(team=team_a, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def viewer(team_a):
    return team_a.memberships.get(user__username="victor").user


@pytest.fixture
def owner_client(alice):
    return _client_for(alice)


@pytest.fixture
def member_client(member):
    return _client_for(member)


@pytest.fixture
def admin_client_a(admin_user):
    return _client_for(admin_user)


@pytest.fixture
def viewer_client(viewer):
    return _client_for(viewer)


@pytest.fixture
def outsider_client(bob):
    """The owner of team B: a member of another team."""
    return _client_for(bob)


@pytest.fixture
def corpus(team_a, alice):
    from apps.corpora.services import corpus_create

    return corpus_create(team=team_a, name="Handbook", user=alice, chunk_tokens=64, overlap_tokens=8)


@pytest.fixture
def pipeline(team_a, corpus, default_models_db):
    from apps.rag.services import pipeline_save

    return pipeline_save(
        team=team_a, name="handbook-qa", model_endpoint="smollm2-135m-instruct", corpora=[corpus], max_output_tokens=32
    )


@pytest.fixture
def default_models_db(db):
    from apps.costs.defaults import ensure_default_models

    ensure_default_models()


@pytest.fixture
def echo_model(monkeypatch):
    """Generation by the engine's EchoTarget (instant); retrieval and embeddings stay real."""
    from apps.costs import metering
    from workers.runtime.meter import EchoTarget

    monkeypatch.setattr(
        metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply="Zebras have stripes [1]")
    )
