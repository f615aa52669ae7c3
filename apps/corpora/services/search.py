"""Metered corpus search: the query embedding is reserved, billed as a ``retrieve`` row, settled.

The selectors (``chunk_search`` / ``chunk_search_many``) stay read-only; the pages and the REST
API search through ``corpus_search``, which wraps them in a hold (cost paths ``search_ui`` and
``search_api``). BM25-only searches embed nothing and reserve nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apps.corpora.models import Corpus
from apps.corpora.selectors import ChunkHit, chunk_search_many
from apps.corpora.services.embedding import (
    embedder_for,
    embedding_billed,
    embedding_bound,
    embedding_price,
    price_name,
)
from apps.costs.models import ZERO, Stage
from apps.costs.pricing import Usage, to_decimal
from apps.costs.services import LedgerContext
from apps.costs.services.holds import spending

SEARCH_PATHS = ("search_ui", "search_api")


def search_bound(*, corpora: list[Corpus], query: str, retriever: str, here: bool = False) -> Decimal:
    """The most embedding ``query`` once per embedding model of ``corpora`` can cost: one call each, its
    tokens counted exactly with each model's tokenizer (as the search bills them).

    ``here``: this process embeds the query (``corpus_search``): the bound comes from its own
    measured embedder (measured on first use), not the documented defaults.
    """
    from apps.costs.tokens import embedding_tokens

    if retriever == "bm25":
        return ZERO
    return sum(
        (
            embedding_bound(model_name=model, tokens=embedding_tokens(model, [query]), here=here)
            for model in {c.embedding_model for c in corpora}
        ),
        ZERO,
    )


def _query_tokens(model_name: str, query: str) -> int:
    from apps.costs.tokens import embedding_tokens

    return embedding_tokens(model_name, [query])


def corpus_search(
    *,
    corpora: list[Corpus] | Corpus,
    query: str,
    path: str,
    retriever: str = "hybrid",
    k: int = 5,
    user: Any = None,
    api_key: Any = None,
    timings: dict | None = None,
) -> list[ChunkHit]:
    """Search like ``chunk_search_many`` under a hold for ``path`` ("search_ui" or "search_api"):
    402 BudgetExceeded before anything is embedded when a budget refuses the query's bound."""
    if path not in SEARCH_PATHS:
        raise ValueError(f"corpus_search serves {SEARCH_PATHS}, not {path!r}")
    corpora = [corpora] if isinstance(corpora, Corpus) else list(corpora)
    if retriever == "bm25" or not corpora:
        return chunk_search_many(corpora=corpora, query=query, retriever=retriever, k=k, timings=timings)
    team = corpora[0].team
    context = LedgerContext(team=team, user=user, api_key=api_key)
    timings = {} if timings is None else timings
    with spending(
        path=path,
        context=context,
        estimate=search_bound(corpora=corpora, query=query, retriever=retriever, here=True),
        description=f"search {', '.join(c.name for c in corpora)}"[:255],
    ) as hold:
        hits = chunk_search_many(corpora=corpora, query=query, retriever=retriever, k=k, timings=timings)
        seconds = timings.get("embed_query_ms", 0.0) / 1000
        if seconds > 0:
            # chunk_search_many embeds once per model; the time is theirs together, billed at the first's price.
            model = corpora[0].embedding_model
            on_gpu = str(getattr(embedder_for(model), "device", "cpu")).startswith("cuda")
            spent = to_decimal(round(seconds, 6))
            hold.record(
                stage=Stage.RETRIEVE,
                model_name=price_name(model),
                usage=Usage(
                    prompt_tokens=_query_tokens(model, query),
                    gpu_seconds=spent if on_gpu else Decimal(0),
                    cpu_seconds=Decimal(0) if on_gpu else spent,
                ),
                price=embedding_price(model),
                latency_ms=int(seconds * 1000),
                finish_reason=path,
            )
            embedding_billed(model)
    return hits
