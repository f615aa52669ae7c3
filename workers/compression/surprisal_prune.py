"""`surprisal_prune`: LLMLingua's idea with a small causal LM (SmolLM2-135M by default).

A word the model finds predictable (low -log p, conditioned on the question and title) carries
little information; the most surprising words, phrases kept whole, survive up to the budget.
Selection and rendering: `pruning`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext, build, identity, size_up
from workers.compression.cache import cache_key
from workers.compression.plan import CompressionPlan, Work, check, knapsack_bound, new_plan, start
from workers.compression.pruning import (
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
from workers.compression.text import (
    STOPWORDS,
    Span,
    allocate,
    flows_on,
    query_keywords,
    token_budget,
    word_core,
)
from workers.prompting.base import Passage

# A phrase unit spans at most this many words, so the word stage still chooses finely.
MAX_PHRASE_WORDS = 6


def phrases(text: str, words: Sequence[Span], protected: Sequence[bool]) -> list[list[int]]:
    """Word indices grouped into phrases: runs of adjacent unprotected content words.

    Two words join when both are content words (not stopwords), only whitespace separates them
    and the first does not end in punctuation. A causal LM finds the rest of a name predictable
    once it has seen its first word ("yellow" is surprising, "fever" after it is not), so
    word-by-word surprisal pruning keeps "yellow" and drops "fever"; as one unit scored by its
    most surprising word, the phrase is kept or dropped whole. Protected words stay units of
    their own (they survive anyway, and protection must not spread to their neighbours).
    """
    cores = [word_core(text[a:b]).lower() for a, b in words]
    content = [bool(c) and c not in STOPWORDS and not p for c, p in zip(cores, protected, strict=True)]
    groups: list[list[int]] = []
    for k in range(len(words)):
        if (
            groups
            and len(groups[-1]) < MAX_PHRASE_WORDS
            and content[k]
            and content[k - 1]
            and flows_on(text, words, k)
        ):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


# Scorings a SurprisalPrune keeps in memory (a passage's: two float/int arrays of its tokens).
MEMO_SIZE = 4096


class SurprisalPrune:
    """Keep the tokens a small causal LM finds most surprising, plus protected spans.

    Coarse to fine like LongLLMLingua: with `fine_keep` set (default) the sentences most relevant
    to the query (the extractive MiniLM ranking; without a query, the sentences of highest mean
    surprisal) are kept up to budget / fine_keep tokens, then surprisal pruning inside them
    reaches the budget. Protected words of the kept sentences always survive (the coarse stage
    keeps them within 70% of the budget); with `fine_keep=None` (plain LLMLingua) every
    protected word of the context survives, even past the budget.

    Cost: one forward pass of the scorer per chunk that has a kept sentence, over (prefix + chunk)
    tokens (model_prompt_tokens reports them). `granularity="word"` (default) scores a word by
    the highest surprisal of its tokens and keeps or drops whole words, which keeps multi-token
    names intact, and with `cohesion` (default) whole phrases of adjacent content words (see
    `phrases`); `"token"` keeps single tokens like LLMLingua. `query_aware=False` conditions
    on the title only, prunes each chunk to its own share, and caches surprisals per chunk.
    """

    name = "surprisal_prune"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        fine_keep: float | None = 0.6,
        granularity: str = "word",
        protect: bool = True,
        aggregate: str = "max",
        dynamic: bool = True,
        cohesion: bool = True,
        bridge: bool = True,
    ) -> None:
        if granularity not in ("word", "token"):
            raise ValueError(f"granularity must be 'word' or 'token', got {granularity!r}")
        if aggregate not in ("max", "mean", "first"):
            raise ValueError(f"aggregate must be 'max', 'mean' or 'first', got {aggregate!r}")
        if fine_keep is not None and not 0.0 < fine_keep <= 1.0:
            raise ValueError(f"fine_keep must be in (0, 1] or None, got {fine_keep}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.fine_keep = fine_keep
        self.granularity = granularity
        self.protect = protect
        self.aggregate = aggregate
        self.dynamic = dynamic
        self.cohesion = cohesion
        self.bridge = bridge
        # The last MEMO_SIZE (prefix, passage) scorings, so one context compressed at several
        # targets (a budget retry, the benchmark) runs the scorer once.
        self._memo: OrderedDict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._memo_lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "fine_keep": self.fine_keep, "granularity": self.granularity,
                "protect": self.protect, "aggregate": self.aggregate, "dynamic": self.dynamic,
                "cohesion": self.cohesion, "bridge": self.bridge}

    def prefix(self, query: str, passage: Passage) -> str:
        head = f"Question: {query}\n" if self.query_aware and query else ""
        return f"{head}Title: {passage.title}\nText:"

    def _scorer_inputs(self, lm: Any, query: str, passage: Passage) -> tuple[list[int], list[int], np.ndarray]:
        """(prefix ids, passage ids, passage token char offsets (T, 2)): what the scorer reads for a passage.

        The passage is tokenized on its own after the prefix ids, so offsets index into its text
        and the first passage token is conditioned on the prefix.
        """
        tokenizer = lm.tokenizer
        # The leading space makes the first word tokenize as it does mid-text (after "Text:").
        encoded = tokenizer(" " + passage.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        offsets = np.array([(max(a - 1, 0), max(b - 1, 0)) for a, b in encoded["offset_mapping"]], dtype=np.int64)
        prefix_ids = tokenizer.encode(self.prefix(query, passage), add_special_tokens=False)
        return prefix_ids, ids, offsets.reshape(-1, 2)

    def _cache_key(self, lm: Any, query: str, passage: Passage) -> str | None:
        """The disk cache's key for a passage's surprisals: only a query-independent prefix is cached."""
        if self.resources.cache is None or (self.query_aware and query):
            return None
        return cache_key(f"{self.name}/surprisal", {"model": lm.name}, passage.text, None,
                         prefix=self.prefix("", passage))

    def _known(self, lm: Any, query: str, passage: Passage, work: Work) -> tuple[np.ndarray, np.ndarray] | None:
        """A passage's (surprisal, offsets) without running the scorer: this call's, the memo's or the
        cache's (pinned in `work` for the rest of the call), else None."""
        memo_key = (str(lm.name), self.prefix(query, passage), passage.text)
        pinned = work.memory.get(("surprisal", *memo_key))
        if pinned is not None:
            return pinned
        with self._memo_lock:
            hit = self._memo.get(memo_key)
            if hit is not None:
                self._memo.move_to_end(memo_key)
        if hit is None:
            key = self._cache_key(lm, query, passage)
            array = work.get_array(key) if key is not None else None
            if array is not None:
                hit = (array[:, 0].astype(np.float64), array[:, 1:].astype(np.int64))
        if hit is not None:
            work.memory[("surprisal", *memo_key)] = hit
        return hit

    def surprisals(
        self, query: str, passage: Passage, work: Work | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(-log p per passage token (T,), char offsets into passage.text (T, 2), tokens the scorer read).

        Cached when the prefix is query-independent; memoized per (scorer, prefix, passage).
        """
        import torch

        work = work if work is not None else Work(self.resources.cache)
        lm = self.resources.get_scorer()
        known = self._known(lm, query, passage, work)
        if known is not None:
            return known[0], known[1], 0  # the scorer did not run
        prefix_ids, ids, offsets = self._scorer_inputs(lm, query, passage)
        input_ids = torch.tensor([prefix_ids + ids], dtype=torch.long, device=lm.device)  # (1, P + T)
        with lm.lock, torch.inference_mode():
            logits = lm.model(input_ids=input_ids).logits[0]  # (P + T, V)
            # Row t predicts token t + 1: the passage tokens are predicted by rows P-1 .. P+T-2.
            logprobs = torch.log_softmax(logits[len(prefix_ids) - 1 : -1].float(), dim=-1)  # (T, V)
            target = torch.tensor(ids, device=logprobs.device)  # (T,)
            surprisal_t = -logprobs.gather(1, target[:, None])[:, 0]  # (T,)
            # float32 like the cached copy, so cached and fresh runs rank ties alike.
            surprisal = surprisal_t.cpu().numpy().astype(np.float32).astype(np.float64)
        work.scorer_passes += 1
        work.scorer_tokens += len(prefix_ids) + len(ids)
        key = self._cache_key(lm, query, passage)
        if key is not None:
            work.put_array(key, np.concatenate([surprisal[:, None], offsets], axis=1).astype(np.float32))
        memo_key = (str(lm.name), self.prefix(query, passage), passage.text)
        work.memory[("surprisal", *memo_key)] = (surprisal, offsets)
        with self._memo_lock:
            self._memo[memo_key] = (surprisal, offsets)
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return surprisal, offsets, len(prefix_ids) + len(ids)

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan:
        """One scorer pass per passage it will score, each of exactly (prefix + passage) tokens.

        Passages already scored (memo, cache) cost nothing and are pinned. With a question and a
        coarse stage, only passages holding a kept sentence are scored and the kept sentences add up
        to at most budget / fine_keep tokens: the passes and tokens are bounded by the best such
        choice (`knapsack_bound`, a passage weighing its shortest sentence); the relevance encode
        is exact, as `extractive`'s. Otherwise every passage with a sentence (and a share of the
        budget, without a question) is scored.
        """
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        plan = new_plan(self, query=query, passages=passages, target=target, tokens_before=before, budget=budget)
        if budget >= before:
            return plan
        assert plan.work is not None
        lm = self.resources.get_scorer()
        plan.scorer = str(lm.name)
        question = query if self.query_aware and query else ""
        shares = [budget] * len(passages) if question else allocate(budget, counts)
        per_passage = sentences_of(passages, count_tokens, None)
        costs: list[tuple[int, int]] = []  # (weight, scorer tokens) per passage it may score
        for passage, sentences, share in zip(passages, per_passage, shares, strict=True):
            if share <= 0 or not sentences or self._known(lm, question, passage, plan.work) is not None:
                continue
            prefix_ids, ids, _ = self._scorer_inputs(lm, question, passage)
            costs.append((min(s.tokens for s in sentences), len(prefix_ids) + len(ids)))
        if question and self.fine_keep is not None and any(per_passage):
            plan_relevance(self.resources, plan, question, passages)
            limit = budget / self.fine_keep
            plan.scorer_passes = knapsack_bound([(w, 1) for w, _ in costs], limit)
            plan.scorer_tokens = knapsack_bound(costs, limit)
            plan.exact = False
        else:
            plan.scorer_passes = len(costs)
            plan.scorer_tokens = sum(tokens for _, tokens in costs)
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
        if self.query_aware and query:
            result = self._prune(query, passages, budget, count_tokens, before, work)
        else:
            # Query-independent: every chunk keeps its own share, so its result depends on the
            # chunk alone (and its surprisals come from the cache after the first time).
            parts = [
                self._prune("", [p], share, count_tokens, n, work)
                for p, n, share in zip(passages, counts, allocate(budget, counts), strict=True)
            ]
            kept = {
                i: part.kept_spans.get(p.chunk_id, [])
                for i, (p, part) in enumerate(zip(passages, parts, strict=True))
            }
            result = build(passages, kept, count_tokens, before)
            result.model_prompt_tokens = sum(part.model_prompt_tokens for part in parts)
        result.compute_s = sized.elapsed()
        if result.model_prompt_tokens:
            result.model = str(self.resources.get_scorer().name)
        return check(plan, work.report(result))

    def _prune(self, query, passages, budget, count_tokens, before, work: Work) -> CompressedContext:
        if budget <= 0:
            return build(passages, {}, count_tokens, before)
        keywords = query_keywords(query) if self.protect else None
        per_passage = sentences_of(passages, count_tokens, keywords)
        sentences = [s for group in per_passage for s in group]
        scored: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        read = 0
        ranks: list[int] | None = None

        def scores_of(i: int) -> tuple[np.ndarray, np.ndarray]:
            nonlocal read
            if i not in scored:
                surprisal, offsets, n = self.surprisals(query, passages[i], work)
                scored[i] = (surprisal, offsets)
                read += n
            return scored[i]

        if self.fine_keep is not None and sentences:
            if query:
                rank = _relevance(self.resources, query, passages, work)
            else:
                rank = np.array([self._mean_surprisal(s, *scores_of(s.passage)) for s in sentences])
            sentences, ranks = ranked_sentences(sentences, rank, budget, self.fine_keep)
        if not self.dynamic:
            ranks = None

        units: list[Unit] = []
        for n, sentence in enumerate(sentences):
            group = ranks[n] if ranks is not None else -1
            text = passages[sentence.passage].text
            surprisal, offsets = scores_of(sentence.passage)
            starts = np.array([w[0] for w in sentence.words], dtype=np.int64)
            # Token t belongs to the word holding its last character (-1: outside this sentence).
            last = np.maximum(offsets[:, 1] - 1, 0)
            inside = (last >= sentence.span[0]) & (last < sentence.span[1])
            owner = np.where(inside, np.searchsorted(starts, last, side="right") - 1, -1)  # (T,)
            if self.granularity == "word":
                scores = [self._aggregate(surprisal[owner == k]) for k in range(len(sentence.words))]
                groups = (phrases(text, sentence.words, sentence.protected) if self.cohesion
                          else [[k] for k in range(len(sentence.words))])
                bridges = (bridge_words(text, sentence.words, sentence.protected) if self.bridge
                           else [False] * len(sentence.words))
                for ks in groups:
                    span = (sentence.words[ks[0]][0], sentence.words[ks[-1]][1])
                    size = sum(sentence.sizes[k] for k in ks)
                    flag = any(sentence.protected[k] for k in ks)  # only single words are protected
                    score = max(scores[k] for k in ks)
                    head = not flag and follows_protected(text, sentence.words, sentence.protected, ks[0])
                    if self.cohesion and head:
                        # The same reason as `phrases`: after "U.S." the LM predicts "currency", after
                        # "12th" it predicts "century"; the head word scores as its protected modifier.
                        score = max(score, scores[ks[0] - 1])
                    units.append(Unit(sentence.passage, span, size, score, flag, group,
                                      bridge=len(ks) == 1 and bridges[ks[0]], head=head))
            else:
                for t in np.flatnonzero(owner >= 0):
                    a, b = int(offsets[t, 0]), int(offsets[t, 1])
                    while a < b and text[a].isspace():  # BPE tokens carry their leading space
                        a += 1
                    if b > a:
                        units.append(Unit(sentence.passage, (a, b), 1, float(surprisal[t]),
                                          sentence.protected[owner[t]], group))
        result = finish(passages, units, select(units, budget), budget, count_tokens, before)
        result.model_prompt_tokens = read
        return result

    def _aggregate(self, values: np.ndarray) -> float:
        if not len(values):
            return 0.0
        if self.aggregate == "max":
            return float(values.max())
        if self.aggregate == "mean":
            return float(values.mean())
        return float(values[0])

    @staticmethod
    def _mean_surprisal(sentence: Sentence, surprisal: np.ndarray, offsets: np.ndarray) -> float:
        inside = (offsets[:, 0] >= sentence.span[0]) & (offsets[:, 1] <= sentence.span[1])
        return float(surprisal[inside].mean()) if inside.any() else 0.0
