"""Shared fixtures: teams, users, API keys, and tasks run synchronously in-process.

Tests run on PostgreSQL when DATABASE_URL points at it (CI), else on SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apps.accounts.models import Role
from apps.accounts.services import api_key_create, membership_set, team_create, user_create


@pytest.fixture(autouse=True)
def _tasks_in_process(settings, tmp_path_factory):
    # Unit tests run tasks in the caller; the integration tests start a real worker instead.
    settings.CELERY_BROKER_URL = None
    settings.PARSIMONY_INPROCESS_SYNC = True


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Django's PBKDF2 (1,000,000 iterations) takes 0.4-0.7 s a password on this machine, and most tests
    # make two or three users and log one in: the fast hasher Django's docs advise for tests. Production
    # keeps the default (apps/config/settings.py sets no PASSWORD_HASHERS).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _answer_cache_off(settings):
    # The answer cache (docs/cache.md) is on by default; tests of other features assert the uncached
    # path's ledger rows and costs, so it is off unless a test turns it on (tests/apps/answer_cache).
    settings.PARSIMONY_ANSWER_CACHE = False


@pytest.fixture(autouse=True)
def _fresh_cost_model():
    # The cost model caches live worker profiles for a few seconds, and this process keeps its own
    # calibrations (what it measured, or a profile a test wrote for it): each test has its own database
    # and starts from the documented defaults.
    from apps.costs.cost_model import throughput_cache_clear
    from apps.costs.services.profiles import profiles_forget_local

    throughput_cache_clear()
    profiles_forget_local()


_CALIBRATIONS: dict[tuple, object] = {}


@pytest.fixture(autouse=True)
def _calibrate_each_model_once_per_session(monkeypatch):
    # A model's speed belongs to this process and machine, not to a test's database: each test still
    # writes its own profile on first use (as a fresh worker does), from the session's one real
    # measurement of that model, instead of spending seconds re-measuring it in every test.
    # (tests/workers/runtime/test_calibration.py imports the functions themselves and measures anew.)
    import workers.runtime.calibration as calibration

    for name in ("calibrate_causal_lm", "calibrate_embedder"):
        original = getattr(calibration, name)

        def once(target, *args, _original=original, _name=name, **kwargs):
            key = (_name, id(target), args, tuple(sorted(kwargs.items())))
            hit = _CALIBRATIONS.get(key)
            if hit is None or hit[0] is not target:
                hit = _CALIBRATIONS[key] = (target, _original(target, *args, **kwargs))
            return hit[1]

        monkeypatch.setattr(calibration, name, once)


@pytest.fixture(scope="session", autouse=True)
def _flush_by_delete_on_postgresql():
    """Transactional tests end with a flush of every table. PostgreSQL's TRUNCATE makes new files for each
    of ~50 tables and their indexes (2-3 s a test on this machine), while DELETE of a test's few rows takes
    0.1 s; Django's foreign keys are deferrable, so one transaction can delete in any order. Content types
    and permissions are kept: they follow from the schema, and keeping them spares the post-migrate signal
    re-creating them with a commit per app."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or not tables:
            return original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        kept = {"django_content_type", "auth_permission"}
        return ["SET CONSTRAINTS ALL DEFERRED"] + [
            f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};"
            for table in tables
            if table not in kept
        ]

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = original


@pytest.fixture(autouse=True)
def _default_models_after_flush(request):
    # Transactional tests flush the tables, seed migrations included: put the defaults back.
    marker = request.node.get_closest_marker("django_db")
    if marker and marker.kwargs.get("transaction"):
        request.getfixturevalue("transactional_db")
        from apps.costs.defaults import ensure_default_models

        ensure_default_models()


@pytest.fixture
def default_models(transactional_db):
    from apps.costs.defaults import ensure_default_models

    ensure_default_models()


@pytest.fixture
def loopback_endpoints(settings):
    """Team endpoints may reach the fake OpenAI server on 127.0.0.1 (the operator's exception, as for a
    self-hosted server): by default a team's endpoint never connects to loopback (docs/operations.md)."""
    settings.PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1"]


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(username: str | None = None, **kwargs):
        counter["n"] += 1
        return user_create(username=username or f"user{counter['n']}", password="a-long-test-password", **kwargs)

    return make


@pytest.fixture
def make_team(db, make_user):
    def make(name: str = "Team", *, members: dict[str, str] | None = None):
        team = team_create(name=name)
        for username, role in (members or {}).items():
            membership_set(team=team, user=make_user(username), role=role)
        return team

    return make


@pytest.fixture
def team_a(make_team):
    return make_team("Team A", members={"alice": Role.OWNER, "victor": Role.VIEWER})


@pytest.fixture
def team_b(make_team):
    return make_team("Team B", members={"bob": Role.OWNER})


@pytest.fixture
def alice(team_a):
    return team_a.memberships.get(user__username="alice").user


@pytest.fixture
def bob(team_b):
    return team_b.memberships.get(user__username="bob").user


@pytest.fixture
def make_api_key(db):
    def make(team, scopes=("read", "query", "ingest"), user=None):
        return api_key_create(team=team, name="test key", scopes=list(scopes), created_by=user)

    return make


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the converted SmolLM2 is kept: PARSIMONY_TEST_MODEL_CACHE (a folder, kept between runs), else a
    session tmp folder."""
    if os.environ.get("PARSIMONY_TEST_MODEL_CACHE"):
        path = Path(os.environ["PARSIMONY_TEST_MODEL_CACHE"]).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def smollm2(model_cache_dir: Path):
    """One real SmolLM2-135M-Instruct for the whole session, on the CPU (one thread by default: the test
    process shares two cores with whatever else runs)."""
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    return load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu")
