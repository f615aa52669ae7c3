"""Embedding holds reserve the work the embedder will compute: the exact tokens of what it will read
(uploads chunked as the worker chunks them), batches padded as it pads them, one overhead per call, at
the measured speed of the process that embeds. Real MiniLM runs fit under their holds, tightly."""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
import time
from decimal import Decimal

import pytest

from apps.core.models import Job
from apps.corpora.models import Chunk, DocumentStatus
from apps.corpora.services import (
    corpus_create,
    corpus_index_rebuild,
    document_upload,
    documents_ingest_start,
    ingest_hold_open,
)
from apps.corpora.services.documents import ingest_bound
from apps.corpora.services.embedding import EMBED_BATCH_CPU, padded_tokens
from apps.corpora.services.search import corpus_search
from apps.costs.cost_model import SAFETY_FACTOR, device_cost
from apps.costs.models import Reservation, ReservationStatus, UsageRecord
from apps.costs.services import budget_save, price_current
from apps.costs.services.profiles import local_profile, profile_write
from apps.costs.tokens import embedding_token_counts, embedding_tokens
from tests.apps.corpora.conftest import COFFEE, VOLCANO, ZEBRA, make_pdf

pytestmark = pytest.mark.django_db

MODEL = "local/all-minilm-l6-v2"
NAME = "all-MiniLM-L6-v2"
TPS, OVERHEAD = 1000.0, 0.02
# A few paragraphs of plain prose: several chunks of different lengths.
ARTICLE = "\n\n".join(
    f"{i}. {ZEBRA} {VOLCANO if i % 2 else COFFEE} " + "Herds move with the rains across the plains. " * (i % 4)
    for i in range(12)
)


@pytest.fixture
def known_speed(db):
    """This process's embedder profile, set to round numbers, so bounds can be checked to the cent."""
    return profile_write(model_name=MODEL, device="cpu", prefill_tps=TPS, decode_tps=0.0, overhead_s=OVERHEAD)


def _expected(calls: list[list[str]]) -> Decimal:
    """SAFETY_FACTOR x (calls x overhead + padded tokens / rate), priced: what the cost model must hold."""
    padded = 0
    for texts in calls:
        tokens = embedding_token_counts(NAME, texts)
        padded += padded_tokens([len(t) for t in texts], tokens, EMBED_BATCH_CPU)
    seconds = SAFETY_FACTOR * (len(calls) * OVERHEAD + padded / TPS)
    return device_cost(price=price_current(model_name=MODEL), seconds=seconds, device="cpu")


def _ingest_reservation(document) -> Reservation:
    job = Job.objects.filter(kind="corpora.ingest", params__document_ids__contains=[document.pk]).get()
    return Reservation.objects.get(pk=job.params["reservation_id"])


# --------------------------------------------------------------------------- the work: padded batches


def test_padding_is_a_batch_of_texts_sorted_by_length_each_padded_to_its_longest():
    # By characters: 50 (20 tokens), 30 (12) | 10 (5).
    assert padded_tokens([10, 50, 30], [5, 20, 12], 2) == 2 * 20 + 5
    assert padded_tokens([10, 50, 30], [5, 20, 12], 16) == 3 * 20


def test_texts_of_equal_length_are_bounded_in_whichever_order_they_are_batched():
    chars, tokens = [10, 10, 10, 4], [3, 9, 4, 2]
    bound = padded_tokens(chars, tokens, 2)
    for order in itertools.permutations(range(3)):  # the three ties, then the short one
        ordered = [tokens[i] for i in order] + [2]
        assert bound >= 2 * max(ordered[:2]) + 2 * max(ordered[2:])


@pytest.mark.slow
def test_the_padding_counted_is_what_the_real_embedder_computes(monkeypatch):
    from workers.runtime.embedders import get_embedder

    embedder = get_embedder(NAME, threads=1)
    texts = [ZEBRA, VOLCANO, COFFEE, "stripes", ARTICLE[:900], ARTICLE[:400], "a b c", VOLCANO[:60]] * 3
    computed = []
    preprocess = embedder._model.preprocess

    def recording(*args, **kwargs):
        features = preprocess(*args, **kwargs)
        computed.append(int(features["input_ids"].numel()))
        return features

    monkeypatch.setattr(embedder._model, "preprocess", recording)
    embedder.encode(texts, batch_size=4)
    tokens = embedding_token_counts(NAME, texts)
    assert sum(computed) == padded_tokens([len(t) for t in texts], tokens, 4)


# --------------------------------------------------------------------------- each path's bound


@pytest.mark.slow
@pytest.mark.parametrize("filename", ["article.txt", "article.pdf"])
def test_an_upload_reserves_exactly_the_chunks_the_worker_embeds(
    filename, corpus, alice, known_speed, django_capture_on_commit_callbacks
):
    data = ARTICLE.encode() if filename.endswith(".txt") else make_pdf(ARTICLE.replace("\n\n", " ").split(". "))
    with django_capture_on_commit_callbacks(execute=True):
        document = document_upload(corpus=corpus, filename=filename, data=data, user=alice)
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY, document.error
    chunks = [c.text for c in Chunk.objects.filter(document=document).order_by("ordinal")]
    assert len(chunks) > 3
    reservation = _ingest_reservation(document)
    # Counted in the web process before anything was stored, and not grown by the worker: the same chunks.
    assert reservation.estimate == _expected([chunks])
    assert reservation.status == ReservationStatus.SETTLED and 0 < reservation.actual <= reservation.estimate
    # The UTF-8 bytes the hold counted before bounded ~4x as many tokens as the chunks hold.
    assert sum(embedding_token_counts(NAME, chunks)) < len(data if filename.endswith(".txt") else ARTICLE) / 3


@pytest.mark.slow
def test_the_worker_grows_a_hold_that_is_short_of_the_chunks_it_made(
    corpus, alice, known_speed, django_capture_on_commit_callbacks
):
    hold = ingest_hold_open(corpus=corpus, texts=[ZEBRA], user=alice)  # reserved for a shorter text
    small = hold.estimate
    document = document_upload(corpus=corpus, filename="a.txt", data=ARTICLE.encode(), user=alice, start_job=False)
    with django_capture_on_commit_callbacks(execute=True):
        documents_ingest_start(documents=[document], user=alice, hold=hold)
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY, document.error
    reservation = Reservation.objects.get(pk=hold.reservation.pk)
    chunks = [c.text for c in Chunk.objects.filter(document=document).order_by("ordinal")]
    assert reservation.estimate == _expected([chunks]) > small
    assert 0 < reservation.actual <= reservation.estimate


@pytest.mark.slow
def test_a_budget_that_refuses_the_growth_fails_the_documents_and_bills_nothing(
    corpus, team_a, alice, known_speed, django_capture_on_commit_callbacks
):
    small = ingest_bound(corpus=corpus, texts=[ZEBRA])
    budget_save(team=team_a, hard_limit=small + Decimal("0.0000000100"), period="month")
    hold = ingest_hold_open(corpus=corpus, texts=[ZEBRA], user=alice)  # fits; the chunks it will make do not
    document = document_upload(corpus=corpus, filename="a.txt", data=ARTICLE.encode(), user=alice, start_job=False)
    with django_capture_on_commit_callbacks(execute=True):
        documents_ingest_start(documents=[document], user=alice, hold=hold)
    document.refresh_from_db()
    assert document.status == DocumentStatus.FAILED
    assert "budget" in document.error
    assert not UsageRecord.objects.exists()
    assert Reservation.objects.get(pk=hold.reservation.pk).status == ReservationStatus.RELEASED


@pytest.mark.slow
def test_a_rebuild_reserves_its_chunks_exactly_with_no_slack(
    corpus, alice, known_speed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        document_upload(corpus=corpus, filename="a.txt", data=ARTICLE.encode(), user=alice)
    corpus_index_rebuild(corpus=corpus)
    reservation = Reservation.objects.filter(description__startswith="index_rebuild:").get()
    chunks = [c.text for c in Chunk.objects.filter(document__corpus=corpus).order_by("vector_id")]
    assert reservation.estimate == _expected([chunks])
    assert 0 < reservation.actual <= reservation.estimate


@pytest.mark.slow
def test_a_search_reserves_one_call_for_the_exact_query_tokens(corpus, alice, known_speed):
    query = "Why do zebras have stripes?"
    corpus_search(corpora=[corpus], query=query, path="search_api", user=alice)  # no index yet: nothing billed
    reservation = Reservation.objects.get(description__startswith="search_api:")
    seconds = SAFETY_FACTOR * (OVERHEAD + embedding_tokens(NAME, [query]) / TPS)
    assert reservation.estimate == device_cost(price=price_current(model_name=MODEL), seconds=seconds, device="cpu")


@pytest.mark.slow
def test_a_tool_with_examples_reserves_two_calls_and_a_tool_search_one(team_a, alice, known_speed):
    from apps.agents.services import tool_create, tool_search_billed

    # Texts no other test embeds: the embedder's cache is the process's, and cached texts are free.
    examples = ["How much turf covers a lawn 7 by 9 metres?", "floor space of the shed"]
    description = "The floor area of a rectangular plot of land, from its two sides in metres."
    tool_create(team=team_a, name="plot_area", description=description, config={"callable": "area_rectangle"},
                examples=examples, created_by=alice)
    held = Reservation.objects.get(description__startswith="tool_index:")
    assert held.estimate == _expected([[f"plot_area: {description}"], examples])
    tool_search_billed(team=team_a, query="area of a rectangle", user=alice)
    searched = Reservation.objects.get(description__startswith="tool_search:")
    assert searched.estimate == _expected([["area of a rectangle"]])


# --------------------------------------------------------------------------- measured, and real runs


@pytest.mark.slow
def test_a_process_measures_its_embedder_on_first_use_and_holds_from_its_own_numbers(corpus, alice):
    from apps.costs.cost_model import DEFAULT_THROUGHPUTS

    assert local_profile(MODEL) is None
    corpus_search(corpora=[corpus], query="zebra stripes", path="search_ui", user=alice)
    profile = local_profile(MODEL)
    assert profile is not None and profile.source == "measured" and profile.device == "cpu"
    assert (profile.prefill_tps, profile.overhead_s) != (
        DEFAULT_THROUGHPUTS[MODEL].prefill_tps, DEFAULT_THROUGHPUTS[MODEL].overhead_s
    )
    seconds = SAFETY_FACTOR * (profile.overhead_s + embedding_tokens(NAME, ["zebra stripes"]) / profile.prefill_tps)
    reservation = Reservation.objects.get(description__startswith="search_ui:")
    assert reservation.estimate == device_cost(price=price_current(model_name=MODEL), seconds=seconds, device="cpu")


@pytest.mark.slow
def test_a_web_process_next_to_workers_advertises_its_embedder_on_no_job_queue(corpus, alice, settings):
    from apps.costs.cost_model import DEFAULT_THROUGHPUTS, throughput_cache_clear, throughput_for
    from apps.costs.models import WorkerProfile
    from apps.costs.worker_identity import local_speeds_forget

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # jobs would go to workers; searches run here
    corpus_search(corpora=[corpus], query="zebra stripes", path="search_api", user=alice)
    assert WorkerProfile.objects.get(model_name=MODEL).queue_list == ["web"]
    local_speeds_forget()  # as another process sees it: not a worker that serves the gpu queue
    throughput_cache_clear()
    assert throughput_for(model=MODEL, queue="gpu") == DEFAULT_THROUGHPUTS[MODEL]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_real_minilm_runs_fit_under_their_holds_tightly(team_a, alice, caplog):
    """Every embedding path once or more with the real MiniLM, this process measured on first use.

    Each hold must cover what ran (no device-seconds cut by the ledger's clamp: the bound held) and be
    tight: SAFETY_FACTOR (1.5) over a prediction that is right on average. On 2 shared, noisy cores a
    call of a few tens of milliseconds can run slower than 1.5x its prediction now and then, so the
    12 short calls are judged by their median and may have two cut; the long-running paths none.
    """
    from apps.agents.services import tool_create, tool_search_billed
    from apps.rag.embeddings import embeddings_create

    budget_save(team=team_a, hard_limit=Decimal("10"), period="month")
    corpus = corpus_create(team=team_a, name="Real", user=alice)  # the default chunking: 256 tokens, 32 overlap
    with caplog.at_level(logging.WARNING, logger="apps.costs.services.ledger"):
        document = document_upload(corpus=corpus, filename="a.txt", data=(ARTICLE * 3).encode(), user=alice)
        document.refresh_from_db()
        assert document.status == DocumentStatus.READY, document.error
        corpus_index_rebuild(corpus=corpus)
        for query in ("Why do zebras have stripes?", "active volcano in Sicily", "how is espresso brewed",
                      "herds on the savanna", "Mount Etna", "coffee beans under pressure"):
            corpus_search(corpora=[corpus], query=query, path="search_api", user=alice)
        embeddings_create(team=team_a, model=NAME, texts=[ZEBRA, VOLCANO, COFFEE, "stripes"], user=alice)
        tool_create(team=team_a, name="room_area", description="The area of a room's floor, from its two walls.",
                    config={"callable": "area_rectangle"}, examples=["carpet for a 4 by 5 room"], created_by=alice)
        for query in ("area of a circle", "greatest common divisor", "degrees to radians", "rectangle area"):
            tool_search_billed(team=team_a, query=query, user=alice)
    cut = [r.getMessage() for r in caplog.records if "device-seconds not billed" in r.getMessage()]
    ratios: dict[str, list[float]] = {}
    for reservation in Reservation.objects.filter(team=team_a):
        assert reservation.status == ReservationStatus.SETTLED, reservation.description
        assert 0 < reservation.actual <= reservation.estimate
        path = reservation.description.split(":", 1)[0]
        ratios.setdefault(path, []).append(float(reservation.estimate / reservation.actual))
    assert set(ratios) == {"ingest", "index_rebuild", "search_api", "embeddings_api", "tool_index", "tool_search"}
    for path in ("ingest", "index_rebuild"):  # seconds of work each: the noise averages out
        assert not [m for m in cut if f"({path}:" in m], cut
        assert 1.0 < ratios[path][0] < 3.0, (path, ratios[path])
    short = ("search_api", "tool_search", "embeddings_api", "tool_index")  # a few tens of ms each
    assert len([m for m in cut if any(f"({path}:" in m for path in short)]) <= 2, cut
    assert 1.0 < statistics.median([r for path in short for r in ratios[path]]) < 3.0, ratios


# --------------------------------------------------------------------------- what a call is billed


@pytest.mark.slow
def test_an_encode_is_billed_for_its_own_work_not_for_waiting_on_another_call():
    from workers.runtime.embedders import get_embedder

    embedder = get_embedder(NAME, threads=1)
    embedder.encode([ZEBRA])
    release = threading.Event()

    def hold_the_model():
        with embedder._lock:
            release.wait(5)

    other = threading.Thread(target=hold_the_model)
    other.start()
    time.sleep(0.05)  # the other call has the model
    threading.Timer(0.5, release.set).start()
    started = time.perf_counter()
    _, seconds = embedder.encode_timed([ZEBRA])
    waited = time.perf_counter() - started
    other.join()
    assert waited >= 0.45
    assert 0 < seconds < 0.3


def test_the_bundled_embedder_is_billed_under_the_one_price_name_every_path_uses():
    """Retrieval, tool search, the quality check, the embeddings API and corpus ingestion bill the bundled
    embedder under one price-book name (they all import ``LOCAL_EMBEDDING_PRICE_NAME``): the one ingestion
    derives from its model name, which the engine loads."""
    from apps.corpora.services.embedding import price_name
    from apps.costs.defaults import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PRICE_NAME, LOCAL_PRICES
    from apps.rag.embeddings import EMBEDDING_MODELS
    from workers.runtime.embedders import DEFAULT_EMBEDDING_MODEL

    assert price_name(LOCAL_EMBEDDING_MODEL) == LOCAL_EMBEDDING_PRICE_NAME == "local/all-minilm-l6-v2"
    assert EMBEDDING_MODELS[LOCAL_EMBEDDING_MODEL] == LOCAL_EMBEDDING_PRICE_NAME
    assert DEFAULT_EMBEDDING_MODEL == LOCAL_EMBEDDING_MODEL and LOCAL_EMBEDDING_PRICE_NAME in LOCAL_PRICES
