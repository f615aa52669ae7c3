"""The identity: the reference every other method is measured against."""

from __future__ import annotations

from collections.abc import Callable

from workers.compression.base import CompressedContext, identity
from workers.compression.plan import CompressionPlan, check, new_plan, start
from workers.prompting.base import Passage


class NoCompression:
    name = "none"

    def __init__(self, *, resources: object = None) -> None:
        # Accepts the shared resources like every method so callers can build any method alike.
        del resources

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan:
        """No work at all."""
        tokens = sum(count_tokens(p.text) for p in passages)
        return new_plan(self, query=query, passages=passages, target=target, tokens_before=tokens, budget=tokens)

    def compress(
        self,
        *,
        query: str,
        passages: list[Passage],
        target: float,
        count_tokens: Callable[[str], int],
        plan: CompressionPlan | None = None,
    ) -> CompressedContext:
        start(self, plan, query=query, passages=passages, target=target)
        tokens = sum(count_tokens(p.text) for p in passages)
        return check(plan, identity(passages, tokens))
