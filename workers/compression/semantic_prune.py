"""`semantic_prune`: drop the words whose deletion moves their sentence's MiniLM embedding least.

All single-word-deletion variants of the kept sentences are embedded in one batched call per
round; impacts are cached per sentence window. Selection and rendering: `pruning`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext, build, identity
from workers.compression.cache import cache_key
from workers.compression.pruning import (
    PROTECTED_MAX_SHARE,
    Unit,
    _relevance,
    bridge_words,
    finish,
    follows_protected,
    ranked_sentences,
    select,
    sentences_of,
)
from workers.compression.resources import Resources
from workers.compression.text import Span, allocate, query_keywords, token_budget
from workers.prompting.base import Passage

# MiniLM reads at most 256 word pieces; longer sentences are cut into windows of this many
# words so every word's deletion is actually seen by the embedder.
MAX_WINDOW_WORDS = 48


class SemanticPrune:
    """Drop the words whose deletion moves their sentence's embedding least.

    Query-aware (default), coarse to fine: the sentences most relevant to the query (the
    extractive ranking) are kept up to budget / `fine_keep` tokens, then words are pruned by
    semantic impact inside them down to the budget; `fine_keep=None` prunes words everywhere
    (pure word-level pruning, no coarse stage). `query_aware=False`: each chunk is pruned
    alone to its proportional share by impact only, and whole results are cached per
    (chunk, share).

    Cost per round: one MiniLM encode of (words + windows) short texts over the sentences
    being pruned; impacts are cached per sentence text, so a chunk seen before costs nothing.
    """

    name = "semantic_prune"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        fine_keep: float | None = 0.6,
        rounds: int = 1,
        protect: bool = True,
        dynamic: bool = True,
        bridge: bool = True,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if fine_keep is not None and not 0.0 < fine_keep <= 1.0:
            raise ValueError(f"fine_keep must be in (0, 1] or None, got {fine_keep}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.fine_keep = fine_keep
        self.rounds = rounds
        self.protect = protect
        self.dynamic = dynamic
        self.bridge = bridge

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "fine_keep": self.fine_keep, "rounds": self.rounds,
                "protect": self.protect, "dynamic": self.dynamic, "bridge": self.bridge}

    def impacts(self, windows: list[list[str]]) -> list[np.ndarray]:
        """Deletion impact of every word of every window: impact[i] = 1 - cos(e(w), e(w without word i)).

        All variants of all windows not in the cache go to the embedder in one encode call;
        results are cached per window text (query- and target-independent).
        """
        embedder = self.resources.get_embedder()
        cache = self.resources.cache
        model = str(getattr(embedder, "model_path", type(embedder).__name__))
        out: list[np.ndarray | None] = []
        keys: list[str | None] = []
        inputs: list[str] = []
        for words in windows:
            key = cache_key(f"{self.name}/impacts", {"model": model}, " ".join(words)) if cache is not None else None
            hit = cache.get_array(key) if cache is not None and key is not None else None
            keys.append(key)
            if hit is not None and hit.shape == (len(words),):
                out.append(hit.astype(np.float64))
                continue
            out.append(None)
            if len(words) > 1:
                inputs.append(" ".join(words))
                inputs.extend(" ".join(words[:i] + words[i + 1 :]) for i in range(len(words)))
        vectors = embedder.encode(inputs) if inputs else None  # (windows + words, D), normalised
        row = 0
        for k, words in enumerate(windows):
            if out[k] is not None:
                continue
            if len(words) <= 1:
                impact = np.ones(len(words))  # a lone word: deleting it deletes everything
            else:
                assert vectors is not None
                base = vectors[row]  # (D,)
                variants = vectors[row + 1 : row + 1 + len(words)]  # (n, D)
                # float32 like the cached copy, so cached and fresh runs rank ties alike.
                impact = (1.0 - variants @ base).astype(np.float32).astype(np.float64)  # (n,)
                row += 1 + len(words)
            out[k] = impact
            key = keys[k]
            if cache is not None and key is not None:
                cache.put_array(key, impact.astype(np.float32))
        return [x for x in out if x is not None]

    def compress(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressedContext:
        started = time.perf_counter()
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        if budget >= before:
            return identity(passages, before)
        if self.query_aware:
            result = self._prune(query, passages, budget, count_tokens, before, coarse=self.fine_keep is not None)
        else:
            result = self._per_chunk(passages, counts, budget, count_tokens, before)
        result.compute_s = time.perf_counter() - started
        return result

    def _per_chunk(self, passages, counts, budget, count_tokens, before) -> CompressedContext:
        """Query-independent: each chunk pruned alone to its share, whole results cached."""
        cache = self.resources.cache
        kept: dict[int, list[Span]] = {}
        for i, (passage, share) in enumerate(zip(passages, allocate(budget, counts), strict=True)):
            key = cache_key(self.name, self.params(), passage.text, share)
            hit = cache.get_json(key) if cache is not None else None
            if hit is None:
                one = self._prune("", [passage], share, count_tokens, counts[i], coarse=False)
                hit = [list(s) for s in one.kept_spans.get(passage.chunk_id, [])]
                if cache is not None:
                    cache.put_json(key, hit)
            kept[i] = [(a, b) for a, b in hit]
        return build(passages, kept, count_tokens, before)

    def _prune(self, query, passages, budget, count_tokens, before, *, coarse: bool) -> CompressedContext:
        per_passage = sentences_of(passages, count_tokens, query_keywords(query) if self.protect else None)
        sentences = [s for group in per_passage for s in group]
        ranks: list[int] | None = None
        if coarse and sentences:
            assert self.fine_keep is not None
            sentences, ranks = ranked_sentences(sentences, _relevance(self.resources, query, passages), budget,
                                                self.fine_keep)
        if not self.dynamic:
            ranks = None
        units: list[Unit] = []
        windows: list[list[int]] = []  # unit indices per window
        for n, sentence in enumerate(sentences):
            group = ranks[n] if ranks is not None else -1
            text = passages[sentence.passage].text
            bridges = (bridge_words(text, sentence.words, sentence.protected)
                       if self.bridge else [False] * len(sentence.words))
            for k in range(0, len(sentence.words), MAX_WINDOW_WORDS):
                window = []
                for w in range(k, min(k + MAX_WINDOW_WORDS, len(sentence.words))):
                    window.append(len(units))
                    flag = sentence.protected[w]
                    # As in SurprisalPrune: only an unprotected word is a head (`select` ranks
                    # protected words first anyway).
                    head = not flag and follows_protected(text, sentence.words, sentence.protected, w)
                    units.append(Unit(passage=sentence.passage, span=sentence.words[w], size=sentence.sizes[w],
                                      protected=flag, group=group, bridge=bridges[w], head=head))
                windows.append(window)
        # Without a sentence stage to drop sentences, protected words can outnumber the budget:
        # then protection becomes a priority (ranked above every other word), not a guarantee.
        boost = [0.0] * len(units)
        if sum(u.size for u in units if u.protected) > PROTECTED_MAX_SHARE * budget:
            for j, unit in enumerate(units):
                boost[j], unit.protected = (1.0 if unit.protected else 0.0), False
        alive = [True] * len(units)
        total = sum(u.size for u in units)
        for round_no in range(1, self.rounds + 1):
            # Impacts of the words still alive, per window as it now reads.
            live_windows = [[j for j in w if alive[j]] for w in windows]
            live_windows = [w for w in live_windows if w]
            texts = [[passages[units[j].passage].text[slice(*units[j].span)] for j in w] for w in live_windows]
            for window, impact in zip(live_windows, self.impacts(texts), strict=True):
                for j, value in zip(window, impact, strict=True):
                    units[j].score = float(value) + boost[j]  # impacts lie in [0, 1]
            live = [j for j in range(len(units)) if alive[j]]
            # Each round removes an equal share of what has to go.
            goal = int(math.floor(total - (total - budget) * round_no / self.rounds))
            for j, kept in zip(live, select([units[j] for j in live], goal), strict=True):
                alive[j] = kept
        return finish(passages, units, alive, budget, count_tokens, before)
