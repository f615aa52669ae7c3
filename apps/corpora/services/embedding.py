"""Embedding chunk texts for a corpus, and billing it: one ledger row per uploader, stage ``embed``.

Embedding spends under a hold (``apps.costs.services.holds``). What a hold reserves for some texts
(``calls_bound``, ``texts_bound``) is what the embedder will compute, priced by the cost model:

- the work: the embedder sorts a call's texts by length and pads each batch to its longest
  text, so a call computes ``batch size x longest tokens`` per batch (tokens as the model reads
  them: special tokens included, truncated at its maximum); each ``encode`` call (a slab of
  texts, a query) pays a fixed overhead;
- the seconds: ``SAFETY_FACTOR x (calls x overhead + padded tokens / tokens per second)``, from the
  profile of the process that runs the work when it is this one (measured on the embedder's first
  use here, ``embedder_for``), else of the slowest live worker (``cost_model.throughput_for``).

``embedding_usage_record`` writes the rows under the hold.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings

from apps.corpora.models import Corpus

logger = logging.getLogger(__name__)

EMBED_SLAB = 512  # chunks per encode call: the embedder sorts by length inside a call
EMBED_BATCH = 64  # texts per forward pass on a GPU
# ... on a CPU: smaller batches stay in cache (MiniLM, one thread: ~20% fewer CPU-seconds per token
# with 16 than with 64), and the embedder's calibration measures this shape.
EMBED_BATCH_CPU = 16

ProgressFn = Callable[..., None]

# The queue a web process's own embedder profile names: none of the job queues.
WEB_PROFILE_QUEUE = "web"
_measure_lock = threading.Lock()
_measured: dict[int, Any] = {}  # id(embedder) -> its Calibration (measured once per loaded embedder)


def embedder_for(model_name: str) -> Any:
    """The process's embedder for ``model_name`` (loaded once; torch only where it embeds), measured on
    its first use here (see ``embedder_measure``)."""
    from workers.runtime.embedders import get_embedder

    embedder = get_embedder(model_name, threads=settings.PARSIMONY_TORCH_THREADS)
    embedder_measure(model_name=model_name, embedder=embedder)
    return embedder


def embedder_measure(*, model_name: str, embedder: Any) -> None:
    """This process's profile for ``embedder``: measured (``workers.runtime.calibration``) the first time
    the process uses it, then kept live. A Celery worker measured its embedder when it started; an
    in-process deployment, and a web process that embeds its own search queries, measure here."""
    from apps.costs.services.profiles import local_profile, profile_write, profiles_heartbeat
    from apps.costs.worker_identity import is_worker

    name = price_name(model_name)
    if local_profile(name) is not None:
        profiles_heartbeat()
        return
    with _measure_lock:
        if local_profile(name) is not None:
            return
        measured = _measured.get(id(embedder))
        if measured is None:
            from workers.runtime.calibration import calibrate_embedder

            measured = _measured[id(embedder)] = calibrate_embedder(embedder)
            logger.info(
                "measured %s on %s: %.0f tok/s, %.4f s per call (%.1f s)",
                name, measured.device, measured.prefill_tps, measured.overhead_s, measured.took_s,
            )
        profile_write(
            model_name=name, device=measured.device, prefill_tps=measured.prefill_tps, decode_tps=0.0,
            overhead_s=measured.overhead_s,
            # A web process next to Celery workers embeds only its own requests (searches, the tool
            # index): it serves no job queue, so it must not bound the workers' jobs.
            queues=None if embeds_in_this_process(job=True) or is_worker() else [WEB_PROFILE_QUEUE],
        )


def embed_batch(device: str) -> int:
    """Texts per forward pass on ``device``."""
    return EMBED_BATCH if str(device).startswith("cuda") else EMBED_BATCH_CPU


def embedding_billed(model_name: str) -> None:
    """After an embedding's row: the profile's bookkeeping (heartbeat; every few calls a refit of this
    process's profile from its rows, so its numbers follow the machine, as a worker's do)."""
    from apps.costs.services.profiles import profile_after_call

    profile_after_call(model_name=price_name(model_name))


def embeds_in_this_process(*, job: bool) -> bool:
    """Whether this process will run an embedding: a request's own work (a search, the tool index)
    always; a job's only when tasks run in-process (no broker)."""
    return not job or not settings.CELERY_BROKER_URL


def price_name(model_name: str) -> str:
    """The price book name of a local embedding model: ``local/<folder name>``."""
    return "local/" + os.path.basename(model_name.rstrip("/")).lower()


def encode_in_slabs(
    embedder: Any, texts: list[str], progress: ProgressFn | None, *, done_before: int = 0, total: int | None = None
) -> tuple[Any, float]:
    """(vectors (N, D) float32, seconds the model spent encoding), reporting ``chunks embedded / total``."""
    import numpy as np

    total = len(texts) if total is None else total
    parts = []
    seconds = 0.0
    for i in range(0, len(texts), EMBED_SLAB):
        vectors, spent = embedder.encode_timed(texts[i : i + EMBED_SLAB], batch_size=embed_batch(embedder.device))
        parts.append(vectors)
        seconds += spent
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


Call = tuple[Sequence[int], Sequence[int]]  # one encode call: its texts' characters and tokens


def padded_tokens(chars: Sequence[int], tokens: Sequence[int], batch_size: int) -> int:
    """Tokens one ``Embedder.encode`` call computes: texts sorted by character length (longest first),
    batches of ``batch_size``, each padded to its longest text in tokens. Texts of equal character
    length may be batched in either order, so a batch's width is the most tokens of any text whose
    length lies within the batch's range (a bound; exact without ties at batch edges)."""
    order = sorted(range(len(chars)), key=lambda i: -chars[i])
    widest: dict[int, int] = {}  # character length -> the most tokens of a text that long
    for length, count in zip(chars, tokens, strict=True):
        widest[length] = max(widest.get(length, 0), count)
    lengths = sorted(widest)
    total = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lo = bisect.bisect_left(lengths, chars[batch[-1]])
        hi = bisect.bisect_right(lengths, chars[batch[0]])
        total += len(batch) * max(widest[length] for length in lengths[lo:hi])
    return total


def slab_calls(chars: Sequence[int], tokens: Sequence[int], slab: int | None = EMBED_SLAB) -> list[Call]:
    """The encode calls ``encode_in_slabs`` makes for texts of these lengths (``slab`` texts each; None: one)."""
    step = slab or len(tokens) or 1
    return [(chars[i : i + step], tokens[i : i + step]) for i in range(0, len(tokens), step)]


def texts_calls(model_name: str, texts: Sequence[str], *, slab: int | None = EMBED_SLAB) -> list[Call]:
    """``slab_calls`` of ``texts``, their tokens counted as the model reads them (special tokens included,
    truncated at its maximum) with the model's own tokenizer, loaded without its weights (a tokenizer
    of its own: the embedder's is reconfigured by every encode, so it is not shared across threads)."""
    from apps.costs.tokens import embedding_token_counts

    texts = list(texts)
    if not texts:
        return []
    return slab_calls([len(t) for t in texts], embedding_token_counts(model_name, texts), slab)


def _throughput(model_name: str, price: Any, tokens: int, here: bool):
    """The speed that bounds the work: this process's own measurement when it runs the work (``here``:
    measured now on first use), else the slowest live worker's (``cost_model.throughput_for``)."""
    from apps.costs.cost_model import Throughput, throughput_for
    from apps.costs.worker_identity import local_speed

    name = price_name(model_name)
    if here:
        embedder_for(model_name)
        own = local_speed(name)
        if own is not None:
            return Throughput(*own)
    return throughput_for(model=name, price=price, tokens_in=tokens, tokens_out=0)


def calls_bound(*, model_name: str, calls: Sequence[Call], price: Any = None, here: bool = False) -> Decimal:
    """What a hold reserves for these encode calls with ``model_name``:
    SAFETY_FACTOR x (calls x overhead + padded tokens / tokens per second), the tokens padded per batch
    as the embedder pads them on the device that bounds the work, priced at the model's price (zero
    when it has none, or nothing to embed).

    ``here``: this process runs the work: its embedder is measured first (on first use) and its own
    numbers bound it.
    """
    from apps.costs.cost_model import SAFETY_FACTOR, device_cost
    from apps.costs.models import ZERO

    calls = [call for call in calls if len(call[1])]
    price = price if price is not None else embedding_price(model_name)
    if price is None or not calls:
        return ZERO
    speed = _throughput(model_name, price, sum(sum(tokens) for _, tokens in calls), here)
    batch = embed_batch(speed.device)
    padded = sum(padded_tokens(chars, tokens, batch) for chars, tokens in calls)
    seconds = SAFETY_FACTOR * (len(calls) * speed.overhead_s + padded / max(speed.prefill_tps, 1e-9))
    return device_cost(price=price, seconds=seconds, device=speed.device)


def embedding_bound(*, model_name: str, tokens: int, price: Any = None, here: bool = False) -> Decimal:
    """``calls_bound`` of one call reading one text of ``tokens`` tokens (a query)."""
    if tokens <= 0:
        from apps.costs.models import ZERO

        return ZERO
    return calls_bound(model_name=model_name, calls=[([1], [tokens])], price=price, here=here)


def texts_bound(
    *,
    model_name: str,
    texts: Sequence[str],
    slab: int | None = EMBED_SLAB,
    price: Any = None,
    here: bool = False,
) -> Decimal:
    """``calls_bound`` of embedding ``texts`` in order, ``slab`` texts per encode call (None: one call)."""
    calls = texts_calls(model_name, texts, slab=slab)
    return calls_bound(model_name=model_name, calls=calls, price=price, here=here)


def texts_embed_billed(*, model_name: str, texts: list[str], context: Any, hold: Any = None) -> tuple[Any, Any]:
    """One encode of ``texts`` with ``model_name``'s embedder in this process, billed: (vectors, its ledger row).

    Under ``hold`` (``apps.costs.services.holds.Hold``), the hold first grows to cover this process's
    bound of the call (``texts_bound``, one call: BudgetExceeded, nothing encoded, when a budget refuses);
    then one ``embed`` row with ``context``: the texts' exact tokens, the measured seconds on the GPU or
    CPU column, at the model's price (``price_name``). Without a hold the row is written under none.
    The caller settles the hold. Serves a query's sentence and quality embeddings
    (``apps.rag.question_runner.QueryHooks``) and the embeddings API (``apps.rag.embeddings``)."""
    from apps.costs.models import Stage
    from apps.costs.pricing import Usage, to_decimal
    from apps.costs.services import price_current, usage_record
    from apps.costs.tokens import embedding_tokens

    price = price_current(model_name=price_name(model_name))
    embedder = embedder_for(model_name)
    if hold is not None:
        hold.ensure(texts_bound(model_name=model_name, texts=texts, slab=None, price=price, here=True))
    vectors, seconds = embedder.encode_timed(texts, batch_size=embed_batch(embedder.device))
    on_gpu = str(getattr(embedder, "device", "cpu")).startswith("cuda")
    spent = to_decimal(round(seconds, 6))
    record = usage_record(
        context=context,
        stage=Stage.EMBED,
        model_name=price_name(model_name),
        usage=Usage(prompt_tokens=embedding_tokens(model_name, texts),
                    gpu_seconds=spent if on_gpu else Decimal(0), cpu_seconds=Decimal(0) if on_gpu else spent),
        price=price,
        latency_ms=int(seconds * 1000),
        reservation=hold.reservation if hold is not None else None,
    )
    embedding_billed(model_name)
    return vectors, record


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
    embedding_billed(corpus.embedding_model)
