"""Writes of the answer cache: the lookup at a query's start, the store after it, eviction, invalidation.

``answer_cache_serve`` (``apps.rag.services.query_run_start``, web process) decides hit, miss or bypass
for a just-created query run. A hit fills the run from the entry at the cost of what the lookup ran
(nothing for an exact hit; the question's embedding, billed under the run's hold, for a semantic one),
settles the hold and records the saving; the run then needs no job. ``answer_cache_store``
(``query_run_execute``, worker) turns a missed run's good answer into an entry and labels the candidate
the lookup was near (same answer or not: the entry's threshold learns from it). docs/cache.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max
from django.utils import timezone

from apps.answer_cache.models import AnswerCacheEntry, AnswerCacheLookup, CacheOutcome, TeamCacheSettings
from apps.costs.models import ZERO, Stage
from apps.costs.pricing import Usage, money, to_decimal
from apps.costs.selectors import query_run_cost
from apps.costs.services import LedgerContext, reservation_close, usage_record

logger = logging.getLogger(__name__)

# The pipeline fields an answer depends on: a change to any of them is another cache key.
ANSWER_FIELDS = (
    "retriever", "top_k", "compression_method", "compression_target", "prompting_strategy", "prompting_options",
    "attention_backend", "attention_options", "fixed_context", "fixed_context_corpus_id", "decoding_options",
    "abstain_below", "system_prompt", "model_endpoint_id",
)
# Answers never stored: degenerate loops, abstentions, and runs cut short.
_NOT_STORED_LABELS = ("degenerate", "abstained")
_NOT_STORED_FINISH = ("budget", "time_limit", "error", "length")
_MAX_OBSERVATIONS = 64  # per entry: the most recent


# --------------------------------------------------------------------------- keys


def corpus_version(*, corpus_ids: list[int]) -> list[Any]:
    """What identifies the corpora's searchable content now: per corpus its embedding and chunking
    settings, index type, ready documents and newest chunk id (a replaced document gets new chunks, a
    deleted one lowers the count, a new one raises it)."""
    from apps.corpora.models import Chunk, Corpus, DocumentStatus

    out: list[Any] = []
    for corpus in Corpus.objects.filter(pk__in=corpus_ids).order_by("pk"):
        stats = Chunk.objects.filter(document__corpus=corpus, document__status=DocumentStatus.READY).aggregate(
            documents=Count("document", distinct=True), newest=Max("id"), chunks=Count("id")
        )
        out.append([corpus.pk, corpus.embedding_model, corpus.chunk_tokens, corpus.overlap_tokens,
                    corpus.index_type, stats["documents"], stats["chunks"], stats["newest"]])
    return out


def pipeline_embedder(pipeline: Any) -> str:
    """The embedding model the cache compares this pipeline's questions with: its first corpus's."""
    corpus = pipeline.corpora.order_by("pk").first()
    return corpus.embedding_model if corpus is not None else ""


def answer_cache_key(*, pipeline: Any, max_output_tokens: int) -> str:
    """sha256 of everything an answer depends on besides the question: the pipeline's answer settings
    (and its output cap for this run), its corpora's version (``corpus_version``) and the embedder."""
    corpus_ids = sorted(pipeline.corpora.values_list("pk", flat=True))
    if pipeline.fixed_context_corpus_id:
        corpus_ids.append(pipeline.fixed_context_corpus_id)
    material = {
        "pipeline": pipeline.pk,
        "settings": {name: getattr(pipeline, name) for name in ANSWER_FIELDS},
        "max_output_tokens": max_output_tokens,
        "corpora": corpus_version(corpus_ids=corpus_ids),
        "embedder": pipeline_embedder(pipeline),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def answer_cache_enabled(*, pipeline: Any, requested: bool | None) -> bool:
    """The cache is consulted when it is on (PARSIMONY_ANSWER_CACHE), on for the pipeline, and the request
    did not say ``cache: false``."""
    return bool(settings.PARSIMONY_ANSWER_CACHE) and bool(pipeline.answer_cache) and requested is not False


def _semantic(pipeline: Any) -> bool:
    """Semantic hits need passages to verify against: retrieval pipelines without a fixed context."""
    return pipeline.retriever != "none" and not pipeline.has_fixed_context and bool(pipeline_embedder(pipeline))


def answer_cache_lookup_bound(*, pipeline: Any, question: str, requested: bool | None) -> Decimal:
    """What the lookup may spend (the question's embedding), added to the query's hold; 0 when the cache
    is not consulted or cannot match semantically."""
    if not answer_cache_enabled(pipeline=pipeline, requested=requested) or not _semantic(pipeline):
        return ZERO
    from apps.corpora.services.search import search_bound

    return search_bound(corpora=list(pipeline.corpora.order_by("pk")[:1]), query=question, retriever="dense",
                        here=True)


# --------------------------------------------------------------------------- the lookup


def _config() -> Any:
    from workers.rag.answer_cache import ThresholdConfig

    return ThresholdConfig(delta=settings.PARSIMONY_ANSWER_CACHE_ERROR_BOUND,
                           min_similarity=settings.PARSIMONY_ANSWER_CACHE_MIN_SIMILARITY)


def _observations(raw: list) -> list[Any]:
    from workers.rag.answer_cache import Observation

    return [Observation(similarity=float(o[0]), correct=bool(o[1]), caught=bool(o[2] if len(o) > 2 else False))
            for o in raw]


def _observe(entry_id: int, *, similarity: float, correct: bool, caught: bool = False) -> None:
    """Append one (similarity, correct, caught) to the entry's observations, under its row lock."""
    with transaction.atomic():
        entry = AnswerCacheEntry.objects.select_for_update().filter(pk=entry_id).first()
        if entry is None:
            return
        entry.observations = [*entry.observations, [round(similarity, 6), correct, caught]][-_MAX_OBSERVATIONS:]
        entry.save(update_fields=["observations"])


def _cited_chunk_ids(citations: list[dict]) -> list[int]:
    cited = [int(c["chunk_id"]) for c in citations if c.get("cited") and c.get("chunk_id") is not None]
    return cited or [int(c["chunk_id"]) for c in citations[:1] if c.get("chunk_id") is not None]


def _entry_valid(entry: AnswerCacheEntry) -> bool:
    """The chunks the answer rests on still exist, in ready documents (a replaced document's chunks are
    new rows; a deleted one's are gone)."""
    from apps.corpora.models import Chunk, DocumentStatus

    ids = set(entry.cited_chunk_ids)
    if not ids:
        return True
    found = Chunk.objects.filter(vector_id__in=ids, document__status=DocumentStatus.READY).count()
    return found == len(ids)


def _invalidate(entry: AnswerCacheEntry) -> None:
    logger.info("answer cache: entry #%s invalidated (a cited document changed or was deleted)", entry.pk)
    AnswerCacheEntry.objects.filter(pk=entry.pk).delete()


def _embed_question(run: Any, pipeline: Any) -> Any:
    """The question's embedding with the pipeline's embedder, billed as one ``embed`` row under the run's
    hold (finish_reason ``answer_cache``)."""
    import numpy as np

    from apps.corpora.services.embedding import embedder_for, embedding_billed, embedding_price, price_name
    from apps.costs.tokens import embedding_tokens

    model = pipeline_embedder(pipeline)
    embedder = embedder_for(model)
    vectors, seconds = embedder.encode_timed([run.question], batch_size=1)
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    spent = to_decimal(round(seconds, 6))
    usage_record(
        context=LedgerContext(team=run.team, user=run.user, api_key=run.api_key, query_run_id=run.pk,
                              pipeline_name=pipeline.name),
        stage=Stage.EMBED,
        model_name=price_name(model),
        usage=Usage(prompt_tokens=embedding_tokens(model, [run.question]),
                    gpu_seconds=spent if on_gpu else Decimal(0), cpu_seconds=Decimal(0) if on_gpu else spent),
        price=embedding_price(model),
        latency_ms=int(seconds * 1000),
        finish_reason="answer_cache",
        reservation=run.reservation,
    )
    embedding_billed(model)
    vector = np.asarray(vectors[0], dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _retrieved_ids(pipeline: Any, question: str, vector: Any) -> set[int]:
    """The vector ids the pipeline's retriever finds for ``question`` at its top_k, from the corpus
    indexes directly (dense with the vector already computed, BM25 on the text: no second embedding)."""
    from apps.corpora.selectors import corpus_index_store

    store = corpus_index_store()
    ids: set[int] = set()
    for corpus in pipeline.corpora.all():
        loaded = store.for_search(corpus.pk)
        if pipeline.retriever in ("dense", "hybrid") and loaded.vector_index is not None:
            _scores, found = loaded.vector_index.search(vector, pipeline.top_k)
            ids |= {int(i) for i in found[0] if i >= 0}
        if pipeline.retriever in ("bm25", "hybrid") and loaded.bm25_index is not None:
            ids |= {int(i) for i, _score in loaded.bm25_index.search(question, pipeline.top_k)}
    return ids


def _lookup(run: Any, outcome: str, key: str, **fields: Any) -> AnswerCacheLookup:
    return AnswerCacheLookup.objects.create(team=run.team, query_run=run, outcome=outcome, key=key, **fields)


def answer_cache_serve(*, run: Any, requested: bool | None = None) -> bool:
    """Look the run's question up in its team's cache; on a hit, answer the run from the entry and return
    True (the run needs no job). A miss returns False and leaves what the store needs on the lookup row."""
    pipeline = run.pipeline
    if pipeline is None or not settings.PARSIMONY_ANSWER_CACHE:
        return False
    if not answer_cache_enabled(pipeline=pipeline, requested=requested):
        _lookup(run, CacheOutcome.BYPASS, "")
        return False
    import numpy as np

    from workers.rag.answer_cache import facts_agree, may_serve, question_hash

    key = answer_cache_key(pipeline=pipeline, max_output_tokens=run.max_output_tokens)
    entries = AnswerCacheEntry.objects.filter(team=run.team, pipeline=pipeline, key=key)
    for exact in entries.filter(question_hash=question_hash(run.question)).order_by("-created_at"):
        if _entry_valid(exact):
            _serve(run, exact, CacheOutcome.HIT_EXACT, key=key, similarity=1.0)
            return True
        _invalidate(exact)
    if not _semantic(pipeline):
        _lookup(run, CacheOutcome.MISS, key)
        return False
    vector = _embed_question(run, pipeline)
    rows = list(entries.exclude(vector=None).values_list("pk", "vector", "observations"))
    if not rows:
        _lookup(run, CacheOutcome.MISS, key, vector=vector.tobytes())
        return False
    matrix = np.stack([np.frombuffer(bytes(v), dtype=np.float32) for _pk, v, _o in rows])  # (N, D)
    sims = matrix @ vector  # (N,) cosine: both sides unit length
    best = int(np.argmax(sims))
    similarity = float(sims[best])
    config = _config()
    if similarity < config.min_similarity:
        _lookup(run, CacheOutcome.MISS, key, vector=vector.tobytes(), similarity=similarity)
        return False
    entry = AnswerCacheEntry.objects.get(pk=rows[best][0])
    miss = {"key": key, "vector": vector.tobytes(), "similarity": similarity, "entry": entry}
    if not _entry_valid(entry):
        _invalidate(entry)
        _lookup(run, CacheOutcome.MISS, **{**miss, "entry": None})
        return False
    agree, why = facts_agree(run.question, entry.question)
    if agree:
        missing = set(entry.cited_chunk_ids) - _retrieved_ids(pipeline, run.question, vector)
        if missing:
            agree, why = False, f"cited passages not retrieved for this question: {sorted(missing)}"
    if not agree:
        _observe(entry.pk, similarity=similarity, correct=False, caught=True)
        _lookup(run, CacheOutcome.MISS, rejected=why[:300], **miss)
        return False
    pool = [o for _pk, _v, raw in rows for o in _observations(raw)]
    serve, bound = may_serve(entry=_observations(entry.observations), pool=pool, similarity=similarity,
                             config=config)
    if not serve:
        # Not sure enough yet: answer normally, and label this candidate by the fresh answer (the store).
        _lookup(run, CacheOutcome.MISS, error_bound=bound, **miss)
        return False
    _serve(run, entry, CacheOutcome.HIT_SEMANTIC, key=key, similarity=similarity, error_bound=bound)
    return True


def _serve(run: Any, entry: AnswerCacheEntry, outcome: str, *, key: str, similarity: float,
           error_bound: float | None = None) -> None:
    """Answer ``run`` from ``entry``: its cost is what the lookup billed; its baseline the same naive
    pipeline cost every saving is claimed against (the entry's source run's: the same question, or a
    verified same-intent one, so an estimate); the hold settles to the cost."""
    started = run.created_at or timezone.now()
    actual = query_run_cost(run.pk)
    if run.reservation_id:
        reservation_close(reservation=run.reservation, actual=actual)
    exact = outcome == CacheOutcome.HIT_EXACT
    baseline = entry.baseline_cost
    # apps.rag.models.BaselineKind (not imported: apps.rag imports this app)
    kind = entry.baseline_kind if exact and entry.baseline_kind else "estimate"
    quality = entry.quality or {}
    type(run).objects.filter(pk=run.pk).update(
        status="succeeded",
        answer=entry.answer,
        finish_reason=entry.finish_reason,
        citations=entry.citations,
        quality_label=quality.get("label", ""),
        support=quality.get("support"),
        support_score=quality.get("support_score"),
        retrieval_confidence=quality.get("retrieval_confidence"),
        citations_removed=quality.get("citations_removed", 0),
        quality=quality.get("full", {}),
        cost=actual,
        baseline_cost=money(baseline),
        baseline_kind=kind,
        savings=money(baseline - actual),
        latency_ms=max(0, int((timezone.now() - started).total_seconds() * 1000)),
        finished_at=timezone.now(),
    )
    _entry_touch(entry)
    _lookup(run, outcome, key, entry=entry, similarity=similarity, error_bound=error_bound,
            saved=money(max(entry.cost - actual, ZERO)))
    run.refresh_from_db()


# --------------------------------------------------------------------------- storing and eviction


def _team_settings(team: Any) -> TeamCacheSettings:
    found, _ = TeamCacheSettings.objects.get_or_create(team=team)
    return found


def _policy_name(team_settings: TeamCacheSettings) -> str:
    return team_settings.policy or settings.PARSIMONY_ANSWER_CACHE_POLICY


def _item(entry: Any, now: float) -> Any:
    from workers.rag.answer_cache.eviction import CacheItem

    return CacheItem(key=entry.pk, cost=float(entry.cost), size=max(entry.size, 1), hits=entry.hits,
                     inserted=entry.created_at.timestamp() if entry.created_at else now,
                     last_used=entry.last_used_at.timestamp() if entry.last_used_at else now,
                     priority=entry.priority)


def _entry_touch(entry: AnswerCacheEntry) -> None:
    """A hit: one more hit, used now, its priority under the team's policy."""
    from workers.rag.answer_cache.eviction import eviction_policy

    team_settings = _team_settings(entry.team)
    now = timezone.now()
    entry.hits += 1
    entry.last_used_at = now
    entry.priority = eviction_policy(_policy_name(team_settings)).priority(
        _item(entry, now.timestamp()), now=now.timestamp(), clock=team_settings.clock
    )
    AnswerCacheEntry.objects.filter(pk=entry.pk).update(hits=F("hits") + 1, last_used_at=now, priority=entry.priority)


def answer_cache_evict(*, team: Any) -> int:
    """Evict the team's entries over its size limit under its policy; returns how many left."""
    from workers.rag.answer_cache.eviction import eviction_policy

    evicted = 0
    with transaction.atomic():
        team_settings = TeamCacheSettings.objects.select_for_update().get(pk=_team_settings(team).pk)
        limit = team_settings.max_entries or settings.PARSIMONY_ANSWER_CACHE_MAX_ENTRIES
        policy = eviction_policy(_policy_name(team_settings))
        entries = list(AnswerCacheEntry.objects.filter(team=team).only(
            "pk", "cost", "size", "hits", "created_at", "last_used_at", "priority"))
        now = timezone.now().timestamp()
        items = {e.pk: _item(e, now) for e in entries}
        while len(items) > limit:
            victim = policy.victim(list(items.values()), now=now)
            team_settings.clock = policy.clock_after(victim, team_settings.clock)
            del items[victim.key]
            AnswerCacheEntry.objects.filter(pk=victim.key).delete()
            evicted += 1
        team_settings.save(update_fields=["clock"])
    return evicted


def answer_cache_store(*, run: Any) -> AnswerCacheEntry | None:
    """After a missed run finished: label the candidate its lookup was near (the fresh answer agrees with
    the cached one, or not), then store the answer when it is a good one; evict over the team's limit.
    Idempotent per question: when a concurrent miss of the same question (same key) stored it first,
    that entry is returned and no second one is made."""
    from workers.rag.answer_cache import answers_agree, question_hash
    from workers.rag.answer_cache.eviction import eviction_policy

    lookup = AnswerCacheLookup.objects.filter(query_run_id=run.pk, outcome=CacheOutcome.MISS, stored=False).first()
    if lookup is None:
        return None
    if lookup.entry_id and not lookup.rejected and lookup.similarity is not None and run.status == "succeeded":
        cached = AnswerCacheEntry.objects.filter(pk=lookup.entry_id).values_list("answer", flat=True).first()
        if cached is not None:
            _observe(lookup.entry_id, similarity=lookup.similarity, correct=answers_agree(cached, run.answer))
    if (run.status != "succeeded" or run.quality_label in _NOT_STORED_LABELS
            or run.finish_reason in _NOT_STORED_FINISH or not run.answer.strip() or run.pipeline_id is None):
        return None
    pipeline = run.pipeline
    key = answer_cache_key(pipeline=pipeline, max_output_tokens=run.max_output_tokens)
    if key != lookup.key:
        return None  # the pipeline or its corpora changed while the run ran: its answer is for the old key
    vector = bytes(lookup.vector) if lookup.vector else None
    quality = {"label": run.quality_label, "support": run.support, "support_score": run.support_score,
               "retrieval_confidence": run.retrieval_confidence, "citations_removed": run.citations_removed,
               "full": run.quality}
    size = len(run.question.encode()) + len(run.answer.encode()) + len(json.dumps(run.citations)) + len(vector or b"")
    team_settings = _team_settings(run.team)
    now = timezone.now()
    entry = AnswerCacheEntry(
        team=run.team, pipeline=pipeline, key=key, question=run.question, question_hash=question_hash(run.question),
        vector=vector, embedder=pipeline_embedder(pipeline) if vector else "", answer=run.answer,
        finish_reason=run.finish_reason, citations=run.citations, cited_chunk_ids=_cited_chunk_ids(run.citations),
        quality=quality, source_run=run, cost=run.cost, baseline_cost=run.baseline_cost,
        baseline_kind=run.baseline_kind, size=size, last_used_at=now,
    )
    entry.priority = eviction_policy(_policy_name(team_settings)).priority(
        _item(entry, now.timestamp()), now=now.timestamp(), clock=team_settings.clock
    )
    try:
        with transaction.atomic():  # a savepoint: a conflict leaves any outer transaction usable
            entry.save()
    except IntegrityError:
        # Another miss of the same question stored it first (the unique team + key + question hash): one
        # entry, the first; this run's answer is not a second copy.
        existing = AnswerCacheEntry.objects.filter(team=run.team, key=key, question_hash=entry.question_hash).first()
        if existing is None:  # the conflicting entry was evicted or invalidated since: nothing to add to
            raise
        AnswerCacheLookup.objects.filter(pk=lookup.pk).update(stored=True, vector=None)
        return existing
    AnswerCacheLookup.objects.filter(pk=lookup.pk).update(stored=True, vector=None)
    answer_cache_evict(team=run.team)
    return entry


def answer_cache_store_safely(*, run: Any) -> None:
    """``answer_cache_store`` for the query path: a failure to cache is logged, never the run's failure."""
    try:
        answer_cache_store(run=run)
    except Exception:  # noqa: BLE001 - the answer is already delivered; the cache is an optimisation
        logger.exception("answer cache: storing query #%s failed", run.pk)


def answer_cache_clear(*, team: Any) -> int:
    """Remove every entry of ``team``; returns how many."""
    deleted, _ = AnswerCacheEntry.objects.filter(team=team).delete()
    return deleted


def answer_cache_settings_set(*, team: Any, max_entries: int | None = None, policy: str = "") -> TeamCacheSettings:
    """The team's own size limit and policy (None / "": the defaults); evicts at once to the new limit."""
    from apps.core.errors import ValidationFailed
    from workers.rag.answer_cache.eviction import POLICY_NAMES

    if policy and policy not in POLICY_NAMES:
        raise ValidationFailed(f"unknown eviction policy {policy!r} (valid: {', '.join(POLICY_NAMES)})")
    if max_entries is not None and max_entries < 1:
        raise ValidationFailed("max_entries must be at least 1")
    found = _team_settings(team)
    found.max_entries, found.policy = max_entries, policy
    found.save(update_fields=["max_entries", "policy"])
    answer_cache_evict(team=team)
    return found


__all__ = [
    "ANSWER_FIELDS",
    "answer_cache_clear",
    "answer_cache_enabled",
    "answer_cache_evict",
    "answer_cache_key",
    "answer_cache_lookup_bound",
    "answer_cache_serve",
    "answer_cache_settings_set",
    "answer_cache_store",
    "answer_cache_store_safely",
    "corpus_version",
]
