"""Embedding chunk texts for a corpus, and billing it: one ledger row per uploader, stage ``embed``.

Embedding spends under a hold (``apps.costs.services.holds``): ``embedding_bound`` is what a hold
reserves before the work (device-seconds from ``apps.costs.cost_model`` priced at the embedding
model's price), ``embedding_usage_record`` writes the rows under it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings

from apps.corpora.models import Corpus

logger = logging.getLogger(__name__)

EMBED_SLAB = 512  # chunks per encode call: the embedder sorts by length inside a call
EMBED_BATCH = 64

ProgressFn = Callable[..., None]


def embedder_for(model_name: str) -> Any:
    """The process's embedder for ``model_name`` (loaded once; torch only in the worker)."""
    from workers.runtime.embedders import get_embedder

    return get_embedder(model_name, threads=settings.PARSIMONY_TORCH_THREADS)


def price_name(model_name: str) -> str:
    """The price book name of a local embedding model: ``local/<folder name>``."""
    return "local/" + os.path.basename(model_name.rstrip("/")).lower()


def encode_in_slabs(
    embedder: Any, texts: list[str], progress: ProgressFn | None, *, done_before: int = 0, total: int | None = None
) -> tuple[Any, float]:
    """(vectors (N, D) float32, seconds spent encoding), reporting ``chunks embedded / total``."""
    import numpy as np

    total = len(texts) if total is None else total
    parts = []
    seconds = 0.0
    for i in range(0, len(texts), EMBED_SLAB):
        started = time.perf_counter()
        parts.append(embedder.encode(texts[i : i + EMBED_SLAB], batch_size=EMBED_BATCH))
        seconds += time.perf_counter() - started
        if progress is not None:
            done = done_before + min(i + EMBED_SLAB, len(texts))
            progress(done, total, f"{done} / {total} chunks embedded")
    vectors = np.vstack(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)
    return vectors, seconds


def embedding_price(model_name: str):
    """The price in force for an embedding model (by its model name or path), or None when it has none."""
    from apps.costs.services import PriceMissing, price_current

    try:
        return price_current(model_name=price_name(model_name))
    except PriceMissing:
        return None


def text_tokens_bound(text_bytes: int, *, chunk_tokens: int = 0, overlap_tokens: int = 0) -> int:
    """An upper bound of the embedding tokens of a text of ``text_bytes`` UTF-8 bytes, chunked with overlap.

    A WordPiece/BPE token covers at least one byte, so bytes bound the tokens; overlapping chunks
    embed the overlap twice (x chunk / (chunk - overlap)); each chunk adds two special tokens.
    """
    if text_bytes <= 0:
        return 0
    if chunk_tokens > overlap_tokens >= 0 and chunk_tokens > 0:
        stride = chunk_tokens - overlap_tokens
        tokens = -(-text_bytes * chunk_tokens // stride)
        return tokens + 2 * (text_bytes // stride + 1)
    return text_bytes + 2


def embedding_bound(*, model_name: str, tokens: int, price: Any = None) -> Decimal:
    """What a hold reserves to embed ``tokens`` with ``model_name``: the cost model's bound of its
    device-seconds, priced at the model's price (zero when it has none, or nothing to embed)."""
    from apps.costs.cost_model import device_cost, device_seconds_bound
    from apps.costs.models import ZERO

    price = price if price is not None else embedding_price(model_name)
    if price is None or tokens <= 0:
        return ZERO
    seconds, device = device_seconds_bound(model=price_name(model_name), tokens_in=tokens)
    return device_cost(price=price, seconds=seconds, device=device)


def embedding_usage_record(
    *,
    corpus: Corpus,
    embedder: Any,
    tokens_by_user: dict[Any, int],
    seconds: float,
    reservation: Any = None,
    api_key: Any = None,
) -> None:
    """Bill ``seconds`` of embedding, shared among the users by their tokens (zero cost without a price),
    under ``reservation`` (the hold the caller settles)."""
    from apps.costs.pricing import Usage, to_decimal
    from apps.costs.services import LedgerContext, PriceMissing, price_current, usage_record

    total_tokens = sum(tokens_by_user.values())
    if total_tokens <= 0:
        return
    model_name = price_name(corpus.embedding_model)
    try:
        price = price_current(model_name=model_name)
    except PriceMissing:
        logger.warning("no price for %s: embedding usage recorded at zero cost", model_name)
        price = None
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    for user, tokens in tokens_by_user.items():
        share = to_decimal(round(seconds * tokens / total_tokens, 6))
        usage_record(
            context=LedgerContext(team=corpus.team, user=user, api_key=api_key),
            stage="embed",
            model_name=model_name,
            usage=Usage(
                prompt_tokens=tokens,
                gpu_seconds=share if on_gpu else Decimal(0),
                cpu_seconds=Decimal(0) if on_gpu else share,
            ),
            price=price,
            latency_ms=int(1000 * seconds * tokens / total_tokens),
            reservation=reservation,
        )
