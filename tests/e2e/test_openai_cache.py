"""The official `openai` client and the answer cache: the extension field, the header, the opt-out."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from apps.costs import metering
from tests.apps.answer_cache.conftest import REPLY, make_corpus_pipeline
from workers.runtime.meter import EchoTarget

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUESTION = "What is the capital of France?"


@pytest.fixture
def geo_client(live_key, team_a, settings, tmp_path, monkeypatch):
    from indexes import corpus_store

    settings.PARSIMONY_ANSWER_CACHE = True
    settings.DATA_ROOT = tmp_path
    corpus_store.cache_clear()
    monkeypatch.setattr(metering, "_target_override", lambda endpoint: EchoTarget(name=endpoint.name, reply=REPLY))
    make_corpus_pipeline(team_a)
    key, base_url = live_key
    return openai.OpenAI(api_key=key.raw_key, base_url=base_url, max_retries=0, timeout=300)


def _ask(client, **extra):
    return client.chat.completions.with_raw_response.create(
        model="geo", messages=[{"role": "user", "content": QUESTION}], **extra
    )


def test_a_repeated_question_is_a_cache_hit_in_the_header_and_the_extension(geo_client):
    first = _ask(geo_client)
    assert first.headers["x-parsimony-cache"] == "miss"
    assert first.parse().model_extra["parsimony"]["cache"]["status"] == "miss"
    again = _ask(geo_client)
    assert again.headers["x-parsimony-cache"] == "hit"
    completion = again.parse()
    cache = completion.model_extra["parsimony"]["cache"]
    assert cache["status"] == "hit" and cache["kind"] == "exact"
    assert completion.choices[0].message.content == first.parse().choices[0].message.content
    assert Decimal(completion.model_extra["parsimony"]["cost"]) == 0


def test_the_extension_field_bypasses_the_cache_and_a_stream_carries_the_header(geo_client):
    _ask(geo_client)
    bypass = _ask(geo_client, extra_body={"cache": False})
    assert bypass.headers["x-parsimony-cache"] == "bypass"
    with geo_client.chat.completions.with_streaming_response.create(
        model="geo", messages=[{"role": "user", "content": QUESTION}], stream=True
    ) as streamed:
        assert streamed.headers["x-parsimony-cache"] == "hit"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)
    assert text == bypass.parse().choices[0].message.content
