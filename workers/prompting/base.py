"""The prompting-strategy interface: what every strategy in `workers.prompting` provides (no Django here).

A strategy turns a question and its retrieved passages into chat messages for any endpoint; a
strategy that needs the model's internals (KV caches, masks, positions: superposition) also runs
the model itself and returns a meter result, so the caller bills it like any other generation.
Strategies are chosen by name from the registry (docs/prompting.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Passage:
    """One retrieved (possibly compressed) passage as the prompt sees it."""

    chunk_id: int
    title: str
    text: str


class PromptingStrategy(Protocol):
    """Turns (question, passages) into chat messages for a plain metered generate().

    `runs_model` False (the default): the caller sends `build_messages(...)` to any endpoint.
    `runs_model` True: the strategy needs the model's internals (KV caches, masks, positions)
    and runs it itself through `generate(...)` (see `ModelRunningStrategy`); it must still
    build plain messages, used for estimates and when there is nothing to lay out.
    """

    name: str
    runs_model: bool

    def build_messages(self, *, system_prompt: str, question: str, passages: list[Passage]) -> list[dict]: ...


class ModelRunningStrategy(PromptingStrategy, Protocol):
    """A strategy that runs a local model itself and returns a meter-compatible GenerationResult.

    `budget_s`: the device-seconds the caller's hold still pays for (None: unbounded), or an
    `Allowance` that grows the hold as decoding goes on; the strategy stops with finish_reason
    "budget" where the hold ends and reports no more seconds than it covered.
    `prompt_tokens_bound`: the most prompt tokens `generate` can report for these arguments (the
    caller prices the hold's token share from it before generating).
    """

    def prompt_tokens_bound(
        self, *, model: Any, system_prompt: str, question: str, passages: Sequence[Passage]
    ) -> int: ...

    def generate(
        self,
        *,
        model: Any,  # workers.runtime.local_lm.LoadedModel
        system_prompt: str,
        question: str,
        passages: Sequence[Passage],
        max_output_tokens: int,
        wall_time_limit_s: float,
        on_token: Callable[[str], None] | None = None,
        kv_store: Any = None,  # indexes.kv_store.KVStore
        budget_s: float | Any | None = None,  # seconds, or a workers.runtime.decode.Allowance
    ) -> Any: ...  # a workers.runtime.meter.GenerationResult
