"""Every list (REST lists under /api/v1, /v1/models, the web's list pages) runs the same number of SQL
queries for 2 objects as for 12: no query per row (issue 24). A warm-up request first, so that what
happens once per key or session (last-used stamps, the session's team) is not counted."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.support.team_objects import TeamObjects

pytestmark = pytest.mark.django_db

MARK = "countme"

# (who asks, path ({corpus} is the team's corpus), the kind listed)
LISTS = [
    ("api", "/api/v1/jobs", "job"),
    ("api", "/api/v1/corpora", "corpus"),
    ("api", "/api/v1/corpora/{corpus}/documents", "document"),
    ("api", "/api/v1/pipelines", "pipeline"),
    ("api", "/api/v1/queries", "query_run"),
    ("api", "/api/v1/budgets", "budget"),
    ("api", "/api/v1/tools", "tool"),
    ("api", "/api/v1/agents", "agent"),
    ("api", "/api/v1/agent-runs", "agent_run"),
    ("api", "/api/v1/usage", "usage_record"),
    ("api", "/v1/models", "pipeline"),
    ("api", "/v1/models", "agent"),
    ("api", "/v1/models", "model_endpoint"),
    ("web", "/jobs/", "job"),
    ("web", "/corpora/", "corpus"),
    ("web", "/corpora/{corpus}/", "document"),
    ("web", "/corpora/{corpus}/documents/", "document"),
    ("web", "/pipelines/", "pipeline"),
    ("web", "/agents/", "agent"),
    ("web", "/agents/", "agent_run"),
    ("web", "/agents/tools/", "tool"),
    ("web", "/usage/", "usage_record"),
    ("web", "/usage/", "budget"),
    ("web", "/team/api-keys/", "api_key"),
    ("web", "/team/members/", "membership"),
    ("web", "/team/members/", "invitation"),
    ("web", "/ask/", "pipeline"),
    ("web", "/", "query_run"),
]


def _count(client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.content[:300])
    return len(queries)


@pytest.mark.parametrize("caller", ["api", "web"])
def test_each_list_runs_the_same_number_of_queries_for_2_and_12_objects(
    caller, client, team_a, alice, make_api_key
):
    from rest_framework.test import APIClient

    if caller == "web":
        client.force_login(alice)
    else:
        client = APIClient()
        key = make_api_key(team_a, scopes=["read", "query", "ingest", "admin"])
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    problems = []
    for n, (who, path, kind) in enumerate(LISTS):
        if who != caller:
            continue
        # One factory (and one corpus, pipeline, agent as parents) per list; only `kind` grows below.
        objects = TeamObjects(team_a, mark=f"{MARK}{n}")
        path = path.format(corpus=objects._parent("corpus").pk)
        make = getattr(objects, kind)
        for i in range(2 if kind == "corpus" else 1, 3):  # the parent corpus is the first of 2
            make(i)
        _count(client, path)  # warm-up
        two = _count(client, path)
        for i in range(3, 13):
            make(i)
        twelve = _count(client, path)
        if twelve != two:
            problems.append(f"GET {path}: {two} queries for 2 {kind} rows, {twelve} for 12")
    assert not problems, "\n".join(problems)
