"""What a compression method returns, and the result builders methods share (the protocol: plan.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from workers.compression.text import Span, render, token_budget
from workers.prompting.base import Passage
from workers.runtime.device_clock import device_clock


@dataclass
class CompressedContext:
    """What a compression method returns: the passages to prompt with and what it cost."""

    passages: list[Passage]
    tokens_before: int
    tokens_after: int
    # Which character spans of each original passage survived: chunk_id -> [(start, end), ...].
    kept_spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    compute_s: float = 0.0
    model_prompt_tokens: int = 0
    model_completion_tokens: int = 0
    # The model that read/wrote the model_*_tokens above (as the meter names it), "" when none:
    # the pipeline bills those tokens at its endpoint's price only when it is the endpoint's model.
    model: str = ""
    # What the call ran, to compare with its CompressionPlan (workers/compression/plan.py):
    # meter calls; sentence-embedder encode calls, their texts and tokens (special tokens
    # included); forward passes of a local scorer and the tokens they read (surprisal_prune,
    # which also reports those tokens as model_prompt_tokens).
    model_calls: int = 0
    embed_calls: int = 0
    embed_texts: int = 0
    embed_tokens: int = 0
    scorer_passes: int = 0
    scorer_tokens: int = 0


def stage_clock() -> Callable[[], float]:
    """The clock a compress stage's ``compute_s`` is read on: the stage is billed as CPU-seconds, those
    of the thread that runs it (``device_clock("cpu")``; its summary calls are billed the same way)."""
    return device_clock("cpu")


@dataclass(frozen=True)
class Sizing:
    """A compress call's measure of its input, taken as it starts: each passage's tokens, their sum, the
    budget the target leaves, and the stage clock with the call's start (``elapsed``: its compute_s)."""

    counts: list[int]
    before: int
    budget: int
    clock: Callable[[], float]
    started: float

    @property
    def fits(self) -> bool:
        """The passages already fit the budget: the method returns them whole (``identity``)."""
        return self.budget >= self.before

    def elapsed(self) -> float:
        return self.clock() - self.started


def size_up(passages: list[Passage], target: float, count_tokens: Callable[[str], int]) -> Sizing:
    """Start a compress call: its clock first, so counting the passages' tokens is part of its time."""
    clock = stage_clock()
    started = clock()
    counts = [count_tokens(p.text) for p in passages]
    before = sum(counts)
    return Sizing(counts=counts, before=before, budget=token_budget(target, before), clock=clock, started=started)


def identity(passages: list[Passage], tokens: int) -> CompressedContext:
    return CompressedContext(
        passages=list(passages),
        tokens_before=tokens,
        tokens_after=tokens,
        kept_spans={p.chunk_id: [(0, len(p.text))] for p in passages},
    )


def build(
    passages: list[Passage], keep: dict[int, list[Span]], count_tokens: Callable[[str], int], before: int
) -> CompressedContext:
    """A CompressedContext from kept spans per passage index; passages that keep nothing are dropped."""
    out: list[Passage] = []
    kept_spans: dict[int, list[Span]] = {}
    after = 0
    for i, passage in enumerate(passages):
        spans = sorted(keep.get(i, []))
        kept_spans[passage.chunk_id] = spans
        if not spans:
            continue
        text = render(passage.text, spans)
        after += count_tokens(text)
        out.append(Passage(chunk_id=passage.chunk_id, title=passage.title, text=text))
    return CompressedContext(passages=out, tokens_before=before, tokens_after=after, kept_spans=kept_spans)
