"""The isolation sweep (issue 24): every URL pattern that names an object, asked by team A for an object
of team B, with every method; every list and page, read by team A, never shows team B's objects.

The patterns come from Django's resolver, not from a list kept here: a new URL that takes an id and has
no entry in KIND_OF_PARAM fails the sweep, and so does a new team-owned model without a factory in
tests/support/team_objects.py.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver

from tests.support.team_objects import BUDGET_MARK, KIND_OF_MODEL, MARK, TeamObjects

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")

# The object kind each URL parameter names; where one parameter name means two kinds, by URL name.
KIND_OF_PARAM = {
    "job_id": "job", "corpus_id": "corpus", "document_id": "document", "pipeline_id": "pipeline",
    "query_id": "query_run", "budget_id": "budget", "tool_id": "tool", "agent_id": "agent",
    "membership_id": "membership", "invitation_id": "invitation", "key_id": "api_key",
    "eval_run_id": "eval_run", "eval_set_id": "eval_set",
    "endpoint_id": "model_endpoint", "bulk_job_id": "bulk_job", "conversation_id": "conversation",
}
KIND_OF_RUN_ID = {
    "query-run": "query_run", "query-run-live": "query_run", "query-run-stop": "query_run",
    "query-run-regenerate": "query_run",
    "api-agent-run": "agent_run", "agent-run": "agent_run", "agent-run-live": "agent_run",
}
# Parameters that are not an object id: the invitation link's token is a signed capability (whoever
# holds it may join; tests/apps/web/test_team_pages.py covers forged, expired and revoked tokens).
NOT_AN_ID = {("invitation-accept", "token")}
# Pages every signed-in user may read whatever their team (no team data), and the API's docs.
SKIP_LISTS = {"login", "logout", "healthz", "api-schema", "api-docs", "api-redoc", "worker-probe"}


def _patterns(resolver: URLResolver | None = None, prefix: str = ""):
    """(route, URLPattern) for every pattern outside the admin; routes as Django writes them."""
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route.startswith("admin/"):
                continue
            yield from _patterns(entry, route)
        elif isinstance(entry, URLPattern):
            yield route, entry


def _params(pattern: URLPattern) -> list[str]:
    return list(pattern.pattern.converters) or list(pattern.pattern.regex.groupindex)


def _kind(pattern: URLPattern, param: str) -> str:
    if param == "run_id":
        if pattern.name not in KIND_OF_RUN_ID:
            pytest.fail(f"{pattern.name}: run_id names no known kind: add it to KIND_OF_RUN_ID")
        return KIND_OF_RUN_ID[pattern.name]
    if param not in KIND_OF_PARAM:
        pytest.fail(
            f"URL {pattern.name!r} takes {param!r}, which the isolation sweep cannot fill: add it to KIND_OF_PARAM"
        )
    return KIND_OF_PARAM[param]


def _fill(route: str, pattern: URLPattern, values: dict[str, str]) -> str:
    path = route
    for param, value in values.items():
        converter = pattern.pattern.converters.get(param)
        token = f"<{type(converter).__name__.removesuffix('Converter').lower()}:{param}>"
        path = path.replace(token, value).replace(f"<{param}>", value)
    assert "<" not in path, f"unfilled {path}"
    return "/" + path


@pytest.fixture
def callers(client, team_a, alice, make_api_key):
    from rest_framework.test import APIClient

    client.force_login(alice)
    api = APIClient()
    key = make_api_key(team_a, scopes=["read", "query", "ingest", "admin"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    return {"web": client, "api": api}


@pytest.fixture
def team_b_objects(team_b):
    factory = TeamObjects(team_b)
    return {kind: getattr(factory, kind)(1) for kind in sorted(set(KIND_OF_MODEL.values()))}


def _caller(route: str) -> str:
    return "api" if route.startswith(("api/", "v1/")) else "web"


def _leaks(response, sent: tuple[str, ...] = ()) -> bool:
    """Whether the answer shows a marked object, apart from the names the caller sent itself."""
    body = b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content
    for own in sent:
        body = body.replace(own.encode(), b"")
    return MARK.encode() in body or BUDGET_MARK.encode() in body


def _row(obj):
    return type(obj).objects.filter(pk=obj.pk).values().first()


def test_every_team_owned_model_has_a_factory():
    owned = {model for model in apps.get_models() if hasattr(model, "TEAM_FIELD")}
    missing = sorted(model.__name__ for model in owned - set(KIND_OF_MODEL))
    assert not missing, f"team-owned models the isolation sweep cannot make: {missing} (tests/support/team_objects.py)"


def test_every_url_with_an_id_refuses_another_teams_object_with_every_method(callers, team_b_objects):
    before = {kind: _row(obj) for kind, obj in team_b_objects.items()}
    swept, problems = [], []
    for route, pattern in _patterns():
        params = [p for p in _params(pattern) if (pattern.name, p) not in NOT_AN_ID]
        if not params:
            continue
        kinds = {param: _kind(pattern, param) for param in params}
        path = _fill(route, pattern, {p: str(team_b_objects[k].pk) for p, k in kinds.items()})
        client = callers[_caller(route)]
        for method in METHODS:
            response = getattr(client, method)(path, {}, **({"format": "json"} if _caller(route) == "api" else {}))
            swept.append((method.upper(), path))
            if response.status_code not in (404, 405) or _leaks(response):
                problems.append(f"{method.upper()} {path} ({pattern.name}) -> {response.status_code}")
    assert not problems, "\n".join(problems)
    after = {kind: _row(obj) for kind, obj in team_b_objects.items()}
    changed = [kind for kind in before if before[kind] != after[kind]]
    assert not changed, f"team B's objects changed by team A's requests: {changed}"
    # The sweep really covered the API, the OpenAI-free REST routes and the web pages.
    assert len(swept) >= 5 * 35, len(swept)


def test_lists_and_pages_never_show_another_teams_objects(callers, team_b_objects, team_a):
    # Team A has something of its own in every list, so an empty list cannot pass by accident.
    mine = TeamObjects(team_a, mark="ownteama")
    kinds = ("corpus", "document", "query_run", "job", "agent_run", "tool", "usage_record", "invitation", "api_key")
    for kind in kinds:
        getattr(mine, kind)(2)
    read = []
    for route, pattern in _patterns():
        if _params(pattern) or pattern.name in SKIP_LISTS or not pattern.name or route.endswith("^"):
            continue
        if route.startswith(("v1/", "api/v1/")) and not isinstance(pattern.pattern.regex.pattern, str):
            continue
        path = "/" + route
        response = callers[_caller(route)].get(path)
        read.append(path)
        assert response.status_code in (200, 405), (path, response.status_code)
        assert not _leaks(response), f"GET {path} shows team B's objects"
    # Team A's own objects do show (the marker test can fail): its corpus page lists its documents.
    own = callers["api"].get("/api/v1/corpora")
    assert "ownteama" in own.content.decode()
    assert len(read) >= 20, read


def test_names_and_ids_in_request_bodies_never_reach_another_teams_objects(callers, team_b_objects):
    pipeline, agent, endpoint = team_b_objects["pipeline"], team_b_objects["agent"], team_b_objects["model_endpoint"]
    corpus, api = team_b_objects["corpus"], callers["api"]
    attempts = [
        ("/api/v1/queries", {"pipeline": pipeline.name, "question": "hi"}),
        ("/api/v1/queries", {"pipeline": str(pipeline.pk), "question": "hi"}),
        ("/api/v1/agent-runs", {"agent": agent.name, "request": "hi"}),
        ("/api/v1/agent-runs", {"agent": str(agent.pk), "request": "hi"}),
        ("/v1/chat/completions", {"model": pipeline.name, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": agent.name, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": endpoint.name, "messages": [{"role": "user", "content": "hi"}]}),
        ("/api/v1/pipelines", {"name": "mine", "model": endpoint.name}),
        ("/api/v1/pipelines", {"name": "mine", "model": "smollm2-135m-instruct", "corpora": [corpus.pk]}),
        ("/api/v1/agents", {"name": "mine", "model": endpoint.name}),
    ]
    for path, body in attempts:
        response = api.post(path, body, format="json")
        assert 400 <= response.status_code < 500, (path, body, response.status_code, response.content[:300])
        sent = tuple(v for v in body.values() if isinstance(v, str))
        assert not _leaks(response, sent), (path, body, response.content[:300])


def test_a_url_with_an_id_the_sweep_cannot_fill_fails_it():
    from django.urls import path

    unknown = path("v1/widgets/<int:widget_id>", lambda request, widget_id: None, name="api-widget")
    with pytest.raises(pytest.fail.Exception, match="widget_id"):
        _kind(unknown, "widget_id")
