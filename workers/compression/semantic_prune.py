"""`semantic_prune`: drop the words whose deletion moves their sentence's MiniLM embedding least.

All single-word-deletion variants of the kept sentences are embedded in one batched call per
round; impacts are cached per sentence window. Selection and rendering: `pruning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext, build, identity, size_up
from workers.compression.cache import cache_key
from workers.compression.plan import (
    CompressionPlan,
    Work,
    check,
    embed_token_counts,
    knapsack_bound,
    new_plan,
    start,
)
from workers.compression.pruning import (
    PROTECTED_MAX_SHARE,
    Sentence,
    Unit,
    _relevance,
    bridge_words,
    finish,
    follows_protected,
    plan_relevance,
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

    @staticmethod
    def window_inputs(words: list[str]) -> list[str]:
        """The texts one window's impacts encode: the window, then each single-word deletion of it
        (nothing for a lone word, whose impact is 1 by definition)."""
        if len(words) <= 1:
            return []
        return [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]

    def _window_key(self, model: str, words: list[str]) -> str:
        return cache_key(f"{self.name}/impacts", {"model": model}, " ".join(words))

    def impacts(self, windows: list[list[str]], work: Work | None = None) -> list[np.ndarray]:
        """Deletion impact of every word of every window: impact[i] = 1 - cos(e(w), e(w without word i)).

        All variants of all windows not in the cache go to the embedder in one encode call;
        results are cached per window text (query- and target-independent).
        """
        work = work if work is not None else Work(self.resources.cache)
        embedder = self.resources.get_embedder()
        model = str(getattr(embedder, "model_path", type(embedder).__name__))
        out: list[np.ndarray | None] = []
        keys: list[str] = []
        inputs: list[str] = []
        for words in windows:
            key = self._window_key(model, words)
            hit = work.get_array(key, (len(words),))
            keys.append(key)
            if hit is not None:
                out.append(hit.astype(np.float64))
                continue
            out.append(None)
            inputs.extend(self.window_inputs(words))
        vectors = work.encode(embedder, inputs) if inputs else None  # (windows + words, D), normalised
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
            work.put_array(keys[k], impact.astype(np.float32))
        return [x for x in out if x is not None]

    def _windows_cost(
        self, plan: CompressionPlan, passages: list[Passage], sentences: list[Sentence]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per sentence: (texts, tokens) its windows encode in the first round (the windows not cached;
        the cached ones are pinned in plan.work), and (texts, tokens) of all its windows, which bound
        any later round's (a later round encodes the same windows with fewer live words: fewer
        texts, each a word subsequence of one counted here, so no more tokens under a tokenizer that
        splits at whitespace first, as MiniLM's WordPiece does)."""
        assert plan.work is not None
        embedder = self.resources.get_embedder()
        model = str(getattr(embedder, "model_path", type(embedder).__name__))
        inputs: list[str] = []
        owners: list[tuple[int, bool]] = []  # (sentence, its window is cached)
        for n, sentence in enumerate(sentences):
            text = passages[sentence.passage].text
            words = [text[a:b] for a, b in sentence.words]
            for k in range(0, len(words), MAX_WINDOW_WORDS):
                window = words[k : k + MAX_WINDOW_WORDS]
                cached = plan.work.get_array(self._window_key(model, window), (len(window),)) is not None
                texts = self.window_inputs(window)
                inputs.extend(texts)
                owners.extend([(n, cached)] * len(texts))
        first_texts, first_tokens = [0] * len(sentences), [0] * len(sentences)
        all_texts, all_tokens = [0] * len(sentences), [0] * len(sentences)
        for (n, cached), tokens in zip(owners, embed_token_counts(embedder, inputs), strict=True):
            all_texts[n] += 1
            all_tokens[n] += tokens
            if not cached:
                first_texts[n] += 1
                first_tokens[n] += tokens
        return first_texts, first_tokens, all_texts, all_tokens

    def _plan_rounds(
        self, plan: CompressionPlan, costs: tuple[list[int], ...], bound: Callable[[list[int]], int]
    ) -> None:
        """Add the encodes of `rounds` pruning rounds over sentences with these costs (`bound` sums a
        per-sentence count over the sentences the run may prune)."""
        first_texts, first_tokens, all_texts, all_tokens = costs
        later = self.rounds - 1
        texts, every = bound(first_texts), bound(all_texts)
        plan.embed_calls += (1 if texts else 0) + (later if every else 0)
        plan.embed_texts += texts + later * every
        plan.embed_tokens += bound(first_tokens) + later * bound(all_tokens)

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan:
        """The relevance encode (exact, as `extractive`), then the deletion variants of the windows.

        Query-aware with a coarse stage: the sentences it keeps add up to at most budget /
        fine_keep tokens, so the variants' texts and tokens are bounded by the best such choice
        (`knapsack_bound`, over every sentence's exact counts); without one, every sentence's
        windows are counted exactly. Query-independent: every chunk whose result is not cached.
        """
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        plan = new_plan(self, query=query, passages=passages, target=target, tokens_before=before, budget=budget)
        if budget >= before:
            return plan
        plan.exact = self.rounds == 1
        if not self.query_aware:
            assert plan.work is not None
            for passage, share in zip(passages, allocate(budget, counts), strict=True):
                if plan.work.get_json(cache_key(self.name, self.params(), passage.text, share)) is not None:
                    continue
                sentences = sentences_of([passage], count_tokens, None)[0]
                self._plan_rounds(plan, self._windows_cost(plan, [passage], sentences), sum)
            return plan
        sentences = [s for group in sentences_of(passages, count_tokens, None) for s in group]
        coarse = self.fine_keep is not None and bool(sentences)
        costs = self._windows_cost(plan, passages, sentences)
        if not coarse:
            self._plan_rounds(plan, costs, sum)
            return plan
        assert self.fine_keep is not None
        plan_relevance(self.resources, plan, query, passages)
        limit = budget / self.fine_keep
        sizes = [s.tokens for s in sentences]
        self._plan_rounds(plan, costs, lambda values: knapsack_bound(list(zip(sizes, values, strict=True)), limit))
        plan.exact = False
        return plan

    def compress(
        self,
        *,
        query: str,
        passages: list[Passage],
        target: float,
        count_tokens: Callable[[str], int],
        plan: CompressionPlan | None = None,
    ) -> CompressedContext:
        work = start(self, plan, query=query, passages=passages, target=target)
        sized = size_up(passages, target, count_tokens)
        if sized.fits:
            return check(plan, identity(passages, sized.before))
        counts, before, budget = sized.counts, sized.before, sized.budget
        if self.query_aware:
            result = self._prune(query, passages, budget, count_tokens, before, work,
                                 coarse=self.fine_keep is not None)
        else:
            result = self._per_chunk(passages, counts, budget, count_tokens, before, work)
        result.compute_s = sized.elapsed()
        return check(plan, work.report(result))

    def _per_chunk(self, passages, counts, budget, count_tokens, before, work: Work) -> CompressedContext:
        """Query-independent: each chunk pruned alone to its share, whole results cached."""
        kept: dict[int, list[Span]] = {}
        for i, (passage, share) in enumerate(zip(passages, allocate(budget, counts), strict=True)):
            key = cache_key(self.name, self.params(), passage.text, share)
            hit = work.get_json(key)
            if hit is None:
                one = self._prune("", [passage], share, count_tokens, counts[i], work, coarse=False)
                hit = [list(s) for s in one.kept_spans.get(passage.chunk_id, [])]
                work.put_json(key, hit)
            kept[i] = [(a, b) for a, b in hit]
        return build(passages, kept, count_tokens, before)

    def _prune(self, query, passages, budget, count_tokens, before, work: Work, *, coarse: bool) -> CompressedContext:
        per_passage = sentences_of(passages, count_tokens, query_keywords(query) if self.protect else None)
        sentences = [s for group in per_passage for s in group]
        ranks: list[int] | None = None
        if coarse and sentences:
            assert self.fine_keep is not None
            sentences, ranks = ranked_sentences(sentences, _relevance(self.resources, query, passages, work), budget,
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
            for window, impact in zip(live_windows, self.impacts(texts, work), strict=True):
                for j, value in zip(window, impact, strict=True):
                    units[j].score = float(value) + boost[j]  # impacts lie in [0, 1]
            live = [j for j in range(len(units)) if alive[j]]
            # Each round removes an equal share of what has to go.
            goal = int(math.floor(total - (total - budget) * round_no / self.rounds))
            for j, kept in zip(live, select([units[j] for j in live], goal), strict=True):
                alive[j] = kept
        return finish(passages, units, alive, budget, count_tokens, before)
