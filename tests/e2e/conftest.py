from __future__ import annotations

import pytest


@pytest.fixture
def live_key(live_server, default_models, team_a, make_api_key):
    """A query-scoped key of team A, and the live server's OpenAI-compatible base URL."""
    created = make_api_key(team_a, scopes=["read", "query", "ingest", "admin"])
    return created, f"{live_server.url}/v1"


@pytest.fixture
def openai_client(live_key):
    import openai

    key, base_url = live_key
    return openai.OpenAI(api_key=key.raw_key, base_url=base_url, max_retries=0, timeout=300)
