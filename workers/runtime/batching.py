"""Continuous batching of concurrent local generations in one worker process (no Django, torch lazily).

Concurrent tasks of one worker process (a ``--pool threads`` worker, or any threads sharing a model)
each run their own decode loop (``workers.runtime.decode.decode``: picking, streaming, stop strings,
grammar masks, the repetition guard, deadlines and the hold's allowance stay per request and
unchanged); only the forward passes are shared. One engine thread per model owns a batched KV cache
(``workers.runtime.fast_lm.KVCache``, one row per request) and:

1. admits waiting requests between decode steps (continuous batching: a request joins a running
   batch at the next step boundary and leaves it as soon as its loop stops), prefilling each
   joiner's prompt in its row (chunked, the joiner's wall-time deadline checked between chunks);
2. once every row in the batch has handed in its next token, runs one decode step for all rows
   (``FastLM.decode_step``: each row at its own position, padding masked) and hands each its logits.

Metering is exact: each engine operation is timed on the engine thread's billing clock
(``workers.runtime.device_clock``) in integer nanoseconds; a prefill is charged to its request, a
decode step is split among the rows in it (``split_ns``: equal shares, the remainder's nanoseconds to
the first rows), so the requests' device-seconds sum exactly to the engine's measured total
(``BatchEngine.total_ns``). A request's decode loop bills on its own clock (``BatchedRequest.clock``:
its device-seconds so far), so the hold's allowance is checked against its share.

What batches: the meter's plain chat generations, with or without a grammar (the agent's constrained
tool calls: the grammar masks logits in the request's own loop). What does not (they run
single-stream under the model lock, between the engine's steps): superposition prompting (a fork-join
cache whose paths attend to a shared prefix but not to each other) and fixed-context attention (a
context held outside the cache, read by a custom attention function): both need their own attention
masks or attention functions inside the forward, which one batched step for all rows does not have.

The engine serializes with every other use of the model through ``LoadedModel.lock`` (taken per
forward pass), so a single-stream call and a batch never compute at once.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.runtime.decode import PrefillStopped, prefill_chunk_tokens

if TYPE_CHECKING:
    import torch

    from workers.runtime.fast_lm import FastLM, KVCache
    from workers.runtime.local_lm import LoadedModel

# Defaults (docs/operations.md, "Batching local generations").
DEFAULT_MAX_ROWS = 8
DEFAULT_MAX_KV_MB = 1024


@dataclass(frozen=True)
class BatchSettings:
    """How one worker process batches: ``max_rows`` requests at once (1: batching off, every generation
    single-stream), ``max_kv_bytes`` the most memory the batch's KV cache may take (rows x the longest
    row's positions); a request that does not fit waits until rows leave (alone it always runs)."""

    max_rows: int = 1
    max_kv_bytes: int = DEFAULT_MAX_KV_MB * 2**20

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.max_kv_bytes < 1:
            raise ValueError(f"max_kv_bytes must be >= 1, got {self.max_kv_bytes}")

    @property
    def enabled(self) -> bool:
        return self.max_rows > 1


def batch_settings() -> BatchSettings:
    """From PARSIMONY_BATCH_MAX_ROWS (default 1: off) and PARSIMONY_BATCH_MAX_KV_MB (default 1024)."""

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from exc

    rows = read("PARSIMONY_BATCH_MAX_ROWS", 1)
    kv_mb = read("PARSIMONY_BATCH_MAX_KV_MB", DEFAULT_MAX_KV_MB)
    if rows < 1:
        raise ValueError(f"PARSIMONY_BATCH_MAX_ROWS must be >= 1, got {rows}")
    if kv_mb < 1:
        raise ValueError(f"PARSIMONY_BATCH_MAX_KV_MB must be >= 1, got {kv_mb}")
    return BatchSettings(max_rows=rows, max_kv_bytes=kv_mb * 2**20)


def split_ns(total_ns: int, n: int) -> list[int]:
    """``total_ns`` split into ``n`` integer shares that sum to it exactly (the first ``total_ns % n`` get one more)."""
    if n < 1:
        raise ValueError(f"cannot split among {n} rows")
    base, extra = divmod(int(total_ns), n)
    return [base + 1 if i < extra else base for i in range(n)]


class EngineClosed(RuntimeError):
    """The engine stopped (closed, or its thread failed): the request cannot go on."""


@dataclass(eq=False)
class BatchedRequest:
    """One generation's place in the batch: its row, its metered nanoseconds, and its hand-offs with the engine.

    ``first_logits`` (V,) once admitted; ``step(token)`` blocks until the batch's next step and returns this
    row's logits (V,); ``close()`` leaves the batch (idempotent; always call it, e.g. in ``finally``).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    deadline: float | None
    device_ns: int = 0  # this request's metered nanoseconds (prefill + its shares of steps)
    steps: int = 0  # decode steps it was in
    batch_sizes: list[int] = field(default_factory=list)  # rows in each step it was in
    first_logits: Any = None
    row: int = -1
    error: BaseException | None = None
    _engine: BatchEngine | None = field(default=None, repr=False)
    _token: int | None = None
    _logits: Any = None
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _closed: bool = False

    @property
    def positions(self) -> int:
        return len(self.prompt_ids) + self.max_new_tokens

    @property
    def device_s(self) -> float:
        return self.device_ns / 1e9

    def clock(self) -> float:
        """This request's billing clock: its device-seconds so far (for the decode loop's allowance)."""
        return self.device_ns / 1e9

    def step(self, token: int) -> torch.Tensor:
        engine = self._engine
        assert engine is not None and not self._closed, "step on a request that is not in a batch"
        self._ready.clear()
        with engine._cond:
            self._token = int(token)
            engine._cond.notify_all()
        self._ready.wait()
        if self.error is not None:
            raise EngineClosed(f"the batch engine failed: {self.error!r}") from self.error
        logits, self._logits = self._logits, None
        return logits

    def close(self) -> None:
        engine = self._engine
        if engine is None or self._closed:
            return
        with engine._cond:
            self._closed = True
            engine._cond.notify_all()


class BatchEngine:
    """Continuous batching over one model's fast forward (see the module doc). Thread-safe ``open``/``close``."""

    def __init__(self, lm: LoadedModel, fast: FastLM, settings: BatchSettings | None = None,
                 clock_ns: Callable[[], int] | None = None) -> None:
        self.lm, self.fast = lm, fast
        self.settings = settings or BatchSettings(max_rows=DEFAULT_MAX_ROWS)
        self._clock_ns = clock_ns
        self._cond = threading.Condition()
        self._waiting: queue.SimpleQueue[BatchedRequest] = queue.SimpleQueue()
        self._pending: list[BatchedRequest] = []
        self._rows: list[BatchedRequest] = []
        self._cache: KVCache | None = None
        self.total_ns = 0  # every nanosecond the engine metered (prefills + steps)
        self.steps = 0
        self.max_batch = 0
        self._closed = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"batch-engine-{lm.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------ caller side

    def open(self, prompt_ids: list[int], *, max_new_tokens: int, deadline: float | None = None) -> BatchedRequest:
        """Queue a generation; block until its prompt is prefilled in a row -> the request (``first_logits`` set).

        Raises ``PrefillStopped`` when ``deadline`` passed between prefill chunks (the chunks read are
        metered on ``PrefillStopped.request``), ``EngineClosed`` when the engine stopped."""
        if not prompt_ids:
            raise ValueError("an empty prompt has nothing to prefill")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        request = BatchedRequest(prompt_ids=list(prompt_ids), max_new_tokens=max_new_tokens, deadline=deadline)
        request._engine = self
        with self._cond:
            if self._closed:
                raise EngineClosed("the batch engine is closed")
            self._pending.append(request)
            self._cond.notify_all()
        request._ready.wait()
        if request.error is not None:
            if isinstance(request.error, PrefillStopped):
                request.error.request = request  # type: ignore[attr-defined]  # the caller bills the chunks read
                raise request.error
            raise EngineClosed(f"the batch engine failed: {request.error!r}") from request.error
        return request

    def close(self) -> None:
        """Stop the engine thread (requests still in it get ``EngineClosed``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------ engine thread

    def _now_ns(self) -> int:
        return self._clock_ns() if self._clock_ns is not None else time.perf_counter_ns()

    def _run(self) -> None:
        import torch

        from workers.runtime.device_clock import device_clock

        if self._clock_ns is None:
            clock = device_clock(self.lm.device)
            # The billing clock in integer nanoseconds on this thread (thread CPU time on a one-thread CPU).
            self._clock_ns = time.thread_time_ns if clock is time.thread_time else time.perf_counter_ns
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        self._cond.wait_for(self._has_work)
                        if self._closed:
                            break
                        self._drop_closed()
                        joiners = self._admissible()
                        ready = bool(self._rows) and all(r._token is not None for r in self._rows)
                    for request in joiners:
                        self._prefill(request)
                    if ready and not joiners:
                        self._step()
        except BaseException as exc:  # noqa: BLE001 - every waiting request must learn the engine died
            self._failure = exc
        finally:
            with self._cond:
                self._closed = True
                stranded = [*self._rows, *self._pending]
                self._rows, self._pending = [], []
            for request in stranded:
                request.error = request.error or self._failure or EngineClosed("the batch engine closed")
                request._ready.set()

    def _has_work(self) -> bool:
        if self._closed or self._pending or any(r._closed for r in self._rows):
            return True
        return bool(self._rows) and all(r._token is not None for r in self._rows)

    def _drop_closed(self) -> None:
        """Remove rows whose requests left; compact the cache (the last row moves into the hole)."""
        i = 0
        while i < len(self._rows):
            if not self._rows[i]._closed:
                i += 1
                continue
            last = len(self._rows) - 1
            assert self._cache is not None
            if i != last:
                self._cache.move_row(last, i)
                self._rows[i] = self._rows[last]
                self._rows[i].row = i
            self._cache.lengths[last] = 0
            self._rows.pop()

    def _admissible(self) -> list[BatchedRequest]:
        """Pending requests that fit now (rows free, the KV bound), oldest first; removed from the queue."""
        admitted: list[BatchedRequest] = []
        per_position = 2 * self.fast.n_layers * self.fast.kv_heads * self.fast.head_dim * self.fast.act_dtype.itemsize
        while self._pending:
            request = self._pending[0]
            rows = [*self._rows, *admitted]
            if len(rows) >= self.settings.max_rows:
                break
            longest = max([r.positions for r in rows] + [request.positions])
            needed = self.settings.max_rows * min(longest, self.fast.max_positions) * per_position
            fits = needed <= self.settings.max_kv_bytes
            if rows and not fits:
                break
            admitted.append(self._pending.pop(0))
        return admitted

    def _ensure_cache(self) -> KVCache:
        if self._cache is None:
            self._cache = self.fast.new_cache(self.settings.max_rows, 256)
        return self._cache

    def _timed(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        on_cuda = self.lm.device.startswith("cuda")
        with self.lm.lock:
            if on_cuda:
                import torch

                torch.cuda.synchronize(self.lm.device)
            t0 = self._now_ns()
            try:
                out = fn()
                if on_cuda:
                    import torch

                    torch.cuda.synchronize(self.lm.device)
            finally:
                elapsed = self._now_ns() - t0
        return out, elapsed

    def _prefill(self, request: BatchedRequest) -> None:
        cache = self._ensure_cache()
        row = len(self._rows)
        cache.lengths[row] = 0
        ids, chunk = request.prompt_ids, prefill_chunk_tokens()
        logits = None
        try:
            for start in range(0, len(ids), chunk):
                if request.deadline is not None and start > 0 and time.perf_counter() > request.deadline:
                    raise PrefillStopped(prefilled=start, total=len(ids))
                piece = ids[start : start + chunk]

                def read(piece: list[int] = piece) -> Any:
                    return self.fast.prefill(cache, row, piece)

                logits, ns = self._timed(read)
                self._charge(request, ns)
        except PrefillStopped as stopped:
            cache.lengths[row] = 0
            request.error = stopped
            request._ready.set()
            return
        except Exception as exc:  # noqa: BLE001 - this request fails, the batch goes on
            cache.lengths[row] = 0
            request.error = exc
            request._ready.set()
            return
        request.first_logits = logits
        request.row = row
        with self._cond:
            self._rows.append(request)
        request._ready.set()

    def _charge(self, request: BatchedRequest, ns: int) -> None:
        request.device_ns += ns
        self.total_ns += ns

    def _step(self) -> None:
        cache = self._ensure_cache()
        rows = list(self._rows)
        tokens = [int(r._token) for r in rows]  # type: ignore[arg-type]  # all handed in (checked by the caller)
        logits, ns = self._timed(lambda: self.fast.decode_step(cache, tokens))  # (B, V)
        self.steps += 1
        self.max_batch = max(self.max_batch, len(rows))
        for request, share in zip(rows, split_ns(ns, len(rows)), strict=True):
            self._charge(request, share)
            request.steps += 1
            request.batch_sizes.append(len(rows))
        for i, request in enumerate(rows):
            request._token = None
            request._logits = logits[i]
            request._ready.set()


# ---------------------------------------------------------------------------- one engine per model

_engines: dict[int, tuple[Any, BatchEngine]] = {}
_engines_lock = threading.Lock()


def batch_engine(lm: LoadedModel, settings: BatchSettings | None = None) -> BatchEngine | None:
    """The process's engine for ``lm`` (started on first use), or None when batching is off
    (``batch_settings().max_rows == 1``) or the fast forward cannot run the model."""
    from workers.runtime.fast_lm import UnsupportedModel, fast_decode_enabled, fast_lm

    settings = settings or batch_settings()
    if not settings.enabled or not fast_decode_enabled():
        return None
    with _engines_lock:
        hit = _engines.get(id(lm))
        if hit is not None and hit[0] is lm and not hit[1]._closed:
            return hit[1]
        try:
            fast = fast_lm(lm)
        except UnsupportedModel:
            return None
        engine = BatchEngine(lm, fast, settings)
        _engines[id(lm)] = (lm, engine)
        return engine


def close_engines() -> None:
    """Stop every engine of this process (tests; a worker shutting down)."""
    with _engines_lock:
        engines = [e for _lm, e in _engines.values()]
        _engines.clear()
    for engine in engines:
        engine.close()


__all__ = [
    "BatchEngine",
    "BatchSettings",
    "BatchedRequest",
    "EngineClosed",
    "batch_engine",
    "batch_settings",
    "close_engines",
    "split_ns",
]
