"""`summarize`: a local instruct model (SmolLM2-135M by default; any meter target) writes a
query-focused summary of each chunk, within a share of the budget weighted by the chunk's relevance.

A summary that is empty, over its share or drops the chunk's key facts is replaced by one
pooled `extractive` choice over every chunk left without a summary, so the result is never
longer than the original nor over budget. Why the rules: docs/compression.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.compression.base import CompressedContext, build, identity, size_up
from workers.compression.cache import cache_key
from workers.compression.extractive import HOP_WEIGHT, Extractive, fit_words
from workers.compression.plan import CompressionPlan, ModelCall, Work, check, new_plan, start
from workers.compression.resources import Resources
from workers.compression.text import (
    STOPWORDS,
    Span,
    allocate_weighted,
    protected_words,
    query_keywords,
    sentence_spans,
    token_budget,
    word_core,
    word_spans,
)
from workers.prompting.base import Passage


def model_label(target: Any) -> str:
    """The name the meter reports for a target (GenerationResult.model)."""
    target = getattr(target, "config", target)  # an OpenAICompatClient reports its config's name
    label = getattr(target, "display_name", None) or getattr(target, "name", None)
    return str(label) if label else type(target).__name__

SUMMARY_SYSTEM = "You write short, factual summaries. Keep names, dates and numbers exactly as written."
SUMMARY_QUERY = (
    "Question: {query}\n\nPassage ({title}):\n{text}\n\n"
    "Summarize the passage in at most {words} words. Keep only the facts that help answer the question."
)
SUMMARY_GENERIC = "Passage ({title}):\n{text}\n\nSummarize the passage in at most {words} words. Keep the key facts."
# Below this many tokens a summary cannot say anything; the extractive choice does better.
MIN_SUMMARY_TOKENS = 8
# A chunk's share below this many tokens is passed on to the next chunk: a word or two cut from
# a sentence ("The", a bare name) costs tokens and tells the reader nothing.
MIN_SHARE_TOKENS = 4
KEY_SENTENCES = 2
# Completion tokens a summary may write beyond what it leaves in the context (a stripped preamble
# such as "Here is a summary:", a word cut at the cap, the end-of-sequence token): one compress
# call's summaries write at most its budget plus this per chunk (`completion_cap`, enforced).
SUMMARY_SLACK_TOKENS = 16
_PREAMBLE = re.compile(r"^(here is|here's|sure|summary)\b[^:\n]*:\s*", re.IGNORECASE)


class Summarize:
    """Query-focused abstractive summaries per chunk by a local (or any meter) instruct model.

    Costs at most one model call per chunk that must shrink: prompt ≈ chunk + question + 60
    tokens, completion ≤ the chunk's share of the budget (less than the chunk); all calls
    together write at most `completion_cap` tokens, and `plan` bounds them before any runs.
    `query_aware=False` writes generic summaries, which
    are then cacheable per (model, chunk, budget). kept_spans is empty for a summarized chunk
    (no original characters survive verbatim) and exact for kept or extractive-fallback chunks.
    """

    name = "summarize"

    def __init__(
        self,
        *,
        resources: Resources | None = None,
        query_aware: bool = True,
        relevance_order: bool = True,
        allocation: str = "relevance",
        temperature: float = 0.1,
        min_key_recall: float = 0.5,
        hop_weight: float = HOP_WEIGHT,
        pool_whole: bool = True,
    ) -> None:
        if not 0.0 <= min_key_recall <= 1.0:
            raise ValueError(f"min_key_recall must be in [0, 1], got {min_key_recall}")
        if allocation not in ("size", "relevance"):
            raise ValueError(f"allocation must be 'size' or 'relevance', got {allocation!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.resources = resources or Resources()
        self.query_aware = query_aware
        self.relevance_order = relevance_order
        self.allocation = allocation
        self.temperature = temperature
        self.min_key_recall = min_key_recall
        # A chunk whose share could keep it whole joins the pooled extractive choice (False: it is
        # kept whole, the behaviour before; measured side by side in docs/benchmarks-compression.md).
        self.pool_whole = pool_whole
        # The title hop in the pooled extractive choice: it follows links between the chunks in
        # the pool only (a summarized chunk is out of it), which now holds every chunk its share
        # could keep whole. Measured: HotpotQA at keep 20%, 32 of 50 answers kept with it, 30
        # without (docs/benchmarks-compression.md).
        self.hop_weight = hop_weight
        # cut_best=False: `_fallback` already keeps the first words of a best sentence longer than
        # the budget, chosen by the whole context's ranking rather than the leftover chunks'.
        self.extractive = Extractive(resources=self.resources, hop_weight=hop_weight, cut_best=False)

    def params(self) -> dict[str, Any]:
        return {"query_aware": self.query_aware, "relevance_order": self.relevance_order,
                "allocation": self.allocation, "temperature": self.temperature,
                "min_key_recall": self.min_key_recall, "hop_weight": self.hop_weight, "pool_whole": self.pool_whole}

    def faithful(self, query: str, key_sentences: Sequence[str], summary: str, *, fits: int = 0) -> bool:
        """Does the summary keep the key facts of the chunk's most query-relevant sentences?

        A small model's summary often drops exactly the fact asked for while restating the
        chunk's topic ("Knowsley United" for "Knowsley United Women"), or stops after a word;
        such a summary is replaced by the extractive choice for that chunk. The key facts are
        the names and numbers of `key_sentences` (best first; their content words when they have
        none), the question's own words aside. Every one of those in the first `fits` sentences
        must be in the summary (the chunk's share could hold those sentences verbatim, so the
        extractive choice would have kept them all), and at least `min_key_recall` of all. A
        summary of fewer than two words, or with no content word beyond the question's, is never
        faithful.
        """
        if not self.min_key_recall:
            return True
        asked = query_keywords(query)
        cores = [word_core(w).lower() for w in summary.split()]
        said = set(cores)
        if len(cores) < 2 or not {w for w in said if w and w not in STOPWORDS and w not in asked}:
            return False
        text = " " + " ".join(cores) + " "
        facts = [self._key_facts(sentence, asked) for sentence in key_sentences]
        if not any(facts):  # no names or numbers: the content words, at the plain threshold
            facts = [query_keywords(sentence) - asked for sentence in key_sentences]
            fits = 0
        every = set().union(*facts)
        if not every:
            return True

        def kept(fact: str) -> bool:
            return f" {fact} " in text if " " in fact else fact in said

        if not all(kept(f) for f in set().union(*facts[:fits])):
            return False
        return sum(kept(f) for f in every) / len(every) >= self.min_key_recall

    @staticmethod
    def _key_facts(sentence: str, asked: set[str]) -> set[str]:
        """A sentence's names and numbers as lower-cased words, plus its multi-word names whole
        ("Knowsley United" does not keep "Knowsley United Women", whose last word the question
        happens to share)."""
        words = word_spans(sentence)
        # A number's counted word ("15th *century*") is no fact of its own: the number is.
        flags = protected_words(sentence, words, set(), counted=False)
        cores = [word_core(sentence[a:b]).lower() for a, b in words]
        facts = {t for t, f in zip(cores, flags, strict=True) if f and t and t not in asked and t not in STOPWORDS}
        runs: list[list[str]] = [[]]
        for (a, b), core, flag in zip(words, cores, flags, strict=True):
            raw = sentence[a:b]
            name_word = flag and core and not core[0].isdigit() and (core not in STOPWORDS or core in ("of", "the"))
            if not name_word or raw[0] in "([{\"'“‘":
                runs.append([])  # a name ends at a plain word ("and"), an opening bracket or quote
            if name_word:
                runs[-1].append(core)
                if raw[-1] in ",.;:!?)]}\"'”’":
                    runs.append([])  # ... and at its own closing punctuation
        facts |= {" ".join(run) for run in runs if len(run) > 1 and not set(run) <= asked}
        return facts

    def _allocation(
        self, query: str, passages: list[Passage], work: Work
    ) -> tuple[list[float], list[str], list[list[Span]], list[float]]:
        """(allocation weight, text to show the summarizer, its key sentences' spans best first,
        its best sentence's relevance) per chunk.

        allocation="size": every chunk weighs 1, so shares are ∝ chunk size (TCRA-LLM's
        setting). "relevance": exp((relevance - best) / temperature), so the chunks that matter
        to the question get most of the budget and off-topic ones little or none (and no model
        call). relevance_order: the chunk's sentences most query-relevant first, because a small
        model's "summary" mostly restates the start of its input.
        """
        texts = [p.text for p in passages]
        if not self._relevance_runs():
            return [1.0] * len(passages), texts, [[] for _ in passages], [0.0] * len(passages)
        spans = [sentence_spans(p.text) for p in passages]
        rel, _ = self.extractive.relevance(query, passages, spans, work)  # (S,) in passage order
        bounds = np.cumsum([0] + [len(s) for s in spans])
        per_passage = [rel[bounds[i] : bounds[i + 1]] for i in range(len(passages))]
        # The key facts a summary must keep: those of the chunk's KEY_SENTENCES most relevant
        # sentences (the best one alone often sets the scene while the next holds the answer).
        keys = [
            [s[k] for k in np.argsort(-r, kind="stable")[:KEY_SENTENCES]]
            for s, r in zip(spans, per_passage, strict=True)
        ]
        if self.relevance_order:
            texts = [
                " ".join(p.text[a:b] for a, b in (s[k] for k in np.argsort(-r, kind="stable")))
                if len(s) > 1
                else p.text
                for p, s, r in zip(passages, spans, per_passage, strict=True)
            ]
        best = np.array([float(r.max()) if len(r) else -1.0 for r in per_passage])  # (P,)
        if self.allocation == "size":
            return [1.0] * len(passages), texts, keys, best.tolist()
        return np.exp((best - best.max()) / self.temperature).tolist(), texts, keys, best.tolist()

    def _relevance_runs(self) -> bool:
        """Does `_allocation` embed the sentences (for the relevance order or the relevance weights)?"""
        return self.query_aware and (self.relevance_order or self.allocation == "relevance")

    def _messages(self, query: str, passage: Passage, shown: str, words: int) -> list[dict[str, str]]:
        template = SUMMARY_QUERY if self.query_aware else SUMMARY_GENERIC
        return [
            {"role": "system", "content": SUMMARY_SYSTEM},
            {"role": "user", "content": template.format(query=query, title=passage.title, text=shown, words=words)},
        ]

    def _summary_key(self, passage: Passage, budget: int) -> str | None:
        """Where a generic summary of `passage` in `budget` tokens is cached (None: not cacheable)."""
        if self.resources.cache is None or self.query_aware:
            return None
        target = self.resources.get_generator()
        return cache_key(self.name, {"model": str(getattr(target, "name", target))}, passage.text, budget,
                         title=passage.title)

    def _summarize(
        self, query: str, passage: Passage, budget: int, shown: str, options: dict[str, Any] | None = None
    ) -> tuple[str, int, int, float]:
        """(summary, prompt tokens, completion tokens, compute seconds) of one model call for one chunk.

        `options`: more keyword arguments for the meter's `generate` (the caller's hold: `budget_s`, ...).
        """
        from workers.runtime.meter import generate

        result = generate(
            target=self.resources.get_generator(),
            messages=self._messages(query, passage, shown, summary_words(budget)),
            max_output_tokens=budget,
            wall_time_limit_s=self.resources.generation_time_limit_s,
            **(options or {}),
        )
        text = _PREAMBLE.sub("", result.text.strip()).strip()
        if result.completion_tokens >= budget and " " in text and not text.endswith((".", "!", "?", '"', ")")):
            # Cut at the token cap: the last word may be a fragment ("Lombard" for "Lombardy").
            text = text.rsplit(" ", 1)[0].rstrip(",;:")
        return text, result.prompt_tokens, result.completion_tokens, result.compute_s

    def _fallback(
        self,
        query: str,
        passages: list[Passage],
        budget: int,
        key_spans: list[list[Span]],
        best_relevance: list[float],
        count_tokens: Callable[[str], int],
        work: Work,
    ) -> CompressedContext:
        """The extractive choice over `passages` (the chunks left without a summary) in `budget` tokens."""
        top = int(np.argmax(best_relevance))
        if key_spans[top]:
            best = key_spans[top][0]
            if count_tokens(passages[top].text[best[0] : best[1]]) > budget:
                # The most relevant sentence is longer than the whole budget, so the extractive
                # choice would take lesser sentences whole; its first words (the subject and its
                # facts come first) usually carry more for the question.
                cut = fit_words(passages[top].text, best, budget, count_tokens)
                if cut is not None:
                    return build([passages[top]], {0: [cut]}, count_tokens, 0)
        return self.extractive.compress_with(query, passages, float(budget), count_tokens, work)

    def _walk(
        self,
        query: str,
        passages: list[Passage],
        counts: list[int],
        budget: int,
        weights: list[float],
        key_spans: list[list[Span]],
        count_tokens: Callable[[str], int],
        write: Callable[[int, int, int, int], tuple[str, int]],
    ) -> _Walk:
        """Chunks in allocation order, each summarized within its share (`write(position, chunk, cap,
        left)` -> (summary, completion tokens)), kept whole or left to the extractive fallback.

        Each chunk takes its share of what is left; a summary shorter than its share (they often
        are) passes the rest on to the chunks after it instead of wasting it, and a share too small
        to say anything is passed on whole. A call's cap is its share, cut to what is left of
        `completion_cap` (which only bites when summaries write far more than they leave).
        """
        order = sorted(range(len(passages)), key=lambda i: -weights[i])  # heaviest first
        walk = _Walk(kept_spans={p.chunk_id: [] for p in passages}, left=budget)
        completion_left = completion_cap(budget, len(passages))
        for pos, i in enumerate(order):
            passage, count = passages[i], counts[i]
            keys = [passage.text[a:b] for a, b in key_spans[i]]
            rest = order[pos:]
            share = allocate_weighted(walk.left, [counts[j] for j in rest], [weights[j] for j in rest])[0]
            if share >= count:
                walk.left = max(walk.left - count, 0)
                if self.pool_whole:
                    # Its share could keep it whole; it goes to the pooled extractive choice with
                    # its size set aside instead. Kept whole, a top chunk's weakest sentences took
                    # the room of a lesser chunk's answer sentence, as truncation does (case notes
                    # in docs/compression.md); pooled, every sentence competes on relevance.
                    # Alone in the pool, or with the budget to spare, it stays whole.
                    walk.deferred.append(i)
                else:
                    walk.texts[i], walk.kept_spans[passage.chunk_id] = passage.text, [(0, len(passage.text))]
                    walk.after += count
                continue
            if share < MIN_SHARE_TOKENS:
                walk.deferred.append(i)  # its share passes on; its sentences stay candidates of the fallback
                continue
            summary = ""
            cap = min(share, completion_left)
            if cap >= MIN_SUMMARY_TOKENS:
                summary, completion = write(pos, i, cap, walk.left)
                completion_left -= completion
            # How many of the key sentences (best first) the share could hold verbatim.
            sizes = np.cumsum([count_tokens(k) for k in keys]) if keys else np.zeros(0)
            fits = int((sizes <= share).sum())
            if summary and count_tokens(summary) <= share and self.faithful(query, keys, summary, fits=fits):
                used = count_tokens(summary)
                walk.texts[i] = summary
                walk.after += used
                walk.left = max(walk.left - used, 0)
            else:
                # Empty, too long (tokenizers differ between the summarizer and the pipeline),
                # unfaithful (lost the key sentences' names and numbers), or too small a budget
                # to summarize: the chunk's share is set aside for the extractive fallback.
                walk.deferred.append(i)
                walk.left = max(walk.left - share, 0)
        return walk

    def plan(
        self, *, query: str, passages: list[Passage], target: float, count_tokens: Callable[[str], int]
    ) -> CompressionPlan:
        """The summary calls the method will make, each with its prompt's bound and its real cap.

        Exact while the walk over the chunks does not depend on a model's output: the shares are
        computed as `compress` computes them, and a cached summary (`query_aware=False` with a
        cache) is read and pinned, so it costs no call and its length passes on exactly. From the
        first summary only a model can write (or from the start, when the shares depend on the
        relevance weights, which need the embedder), every later chunk that can still be
        summarized is one call capped at min(its tokens - 1, what was left, `completion_cap`):
        a chunk is summarized only when its share is below its size, and shares never exceed
        what is left. The calls' completions together are capped at `completion_cap`
        (enforced). Prompts: the chat template's exact tokens for the chunk as shown (its
        sentences in any order, counted as they join). Embeddings: the relevance encode (exact,
        as `extractive`'s), and the fallback's when no relevance ran.
        """
        counts = [count_tokens(p.text) for p in passages]
        before = sum(counts)
        budget = token_budget(target, before)
        plan = new_plan(self, query=query, passages=passages, target=target, tokens_before=before, budget=budget)
        if budget >= before:
            return plan
        work = plan.work
        assert work is not None
        spans = [sentence_spans(p.text) for p in passages]
        if self._relevance_runs():
            self.extractive.plan_relevance(plan, query, passages, spans)
        generator = self.resources.get_generator()
        plan.completion_cap = completion_cap(budget, len(passages))
        reordered = self.query_aware and self.relevance_order
        calls: list[ModelCall] = []

        def call(i: int, cap: int) -> ModelCall:
            return ModelCall(self._prompt_bound(generator, query, passages[i], cap, reordered), cap)

        def cached(pos: int, i: int, cap: int, left: int) -> tuple[str, int]:
            key = self._summary_key(passages[i], cap)
            hit = work.get_json(key) if key is not None else None
            if hit is None:
                raise _Unwritten(pos, i, cap, left)
            return hit["text"], 0

        walk: _Walk | None = None
        rest: list[int] = list(range(len(passages)))  # the chunks after the walk's last known step
        left = budget
        if not (self.query_aware and self.allocation == "relevance"):
            # Every chunk weighs 1 (`_allocation`): the order and shares are known up front.
            try:
                walk = self._walk(query, passages, counts, budget, [1.0] * len(passages),
                                  [[] for _ in passages], count_tokens, cached)
            except _Unwritten as stop:
                calls.append(call(stop.index, stop.cap))
                rest, left = rest[stop.position + 1 :], stop.left
        if walk is None:
            plan.exact = False
            for j in rest:
                cap = min(counts[j] - 1, left, plan.completion_cap)
                if cap >= MIN_SUMMARY_TOKENS:
                    calls.append(call(j, cap))
        plan.model_calls = calls
        plan.model = model_label(generator) if calls else ""
        if not self._relevance_runs():
            # The fallback's extractive choice embeds the chunks left to it (all, at most).
            if walk is None:
                pool = list(range(len(passages)))
            else:
                left = budget - walk.after
                # `compress` runs it only with a pool and a few tokens left, and keeps a pool whole
                # (no encode) when they cover it.
                runs = walk.deferred and left >= MIN_SHARE_TOKENS and left < sum(counts[i] for i in walk.deferred)
                pool = list(walk.deferred) if runs else []
            if pool:
                pool.sort()
                self.extractive.plan_relevance(plan, query, [passages[i] for i in pool], [spans[i] for i in pool])
        return plan

    def _prompt_bound(self, generator: Any, query: str, passage: Passage, cap: int, reordered: bool) -> int:
        """The prompt tokens of a summary call on `passage` capped at `cap` (or less).

        The instruction says `summary_words(cap)` words (no more digits than a smaller cap's). The
        chunk is shown as it is, or (`reordered`) as its sentences joined by spaces in relevance
        order, unknown here: with a tokenizer that splits at spaces before merging (byte-level BPE
        as SmolLM2's, Llama 3's and tiktoken's; SentencePiece), sentences joined by a space count
        as the first sentence plus each other one with its leading space, so any order counts as
        the text order plus the most the first sentence can gain from losing its leading space,
        plus what the text order's first sentence gained from it.
        """
        words = summary_words(cap)
        spans = sentence_spans(passage.text)
        if not reordered or len(spans) <= 1:
            return chat_tokens_bound_for(generator, self._messages(query, passage, passage.text, words))
        sentences = [passage.text[a:b] for a, b in spans]
        alone = [text_tokens_bound_for(generator, s) for s in sentences]
        spaced = [text_tokens_bound_for(generator, " " + s) for s in sentences]
        slack = max(0, max(a - b for a, b in zip(alone, spaced, strict=True))) + max(0, spaced[0] - alone[0])
        joined = " ".join(sentences)
        return chat_tokens_bound_for(generator, self._messages(query, passage, joined, words)) + slack

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
        weights, shown, key_spans, best_relevance = self._allocation(query, passages, work)
        spent = {"prompt": 0, "completion": 0}
        model_s = 0.0

        def write(pos: int, i: int, cap: int, left: int) -> tuple[str, int]:
            nonlocal model_s
            key = self._summary_key(passages[i], cap)
            hit = work.get_json(key) if key is not None else None
            if hit is not None:
                return hit["text"], 0
            options = None
            if plan is not None and plan.on_model_call is not None:
                # The call about to run, counted exactly now that its share and text are known.
                messages = self._messages(query, passages[i], shown[i], summary_words(cap))
                generator = self.resources.get_generator()
                options = plan.on_model_call(ModelCall(chat_tokens_bound_for(generator, messages), cap))
            text, p_tokens, c_tokens, seconds = self._summarize(query, passages[i], cap, shown[i], options)
            work.model_calls += 1
            spent["prompt"] += p_tokens
            spent["completion"] += c_tokens
            model_s += seconds
            if key is not None and text:
                work.put_json(key, {"text": text})
            return text, c_tokens

        walk = self._walk(query, passages, counts, budget, weights, key_spans, count_tokens, write)
        texts, kept_spans, after = walk.texts, walk.kept_spans, walk.after
        if walk.deferred and budget - after >= MIN_SHARE_TOKENS:
            # One extractive choice over every chunk without a summary, with all the budget the
            # summaries left: a choice per chunk spends each share on that chunk's best sentences
            # even where another chunk's sentence matters more (measured: the per-chunk fallback
            # lost to truncation where extractive over all chunks did not).
            deferred = sorted(walk.deferred)  # passage order: the extractive rank prior reads it
            fallback = self._fallback(query, [passages[i] for i in deferred], budget - after,
                                      [key_spans[i] for i in deferred], [best_relevance[i] for i in deferred],
                                      count_tokens, work)
            index = {passages[i].chunk_id: i for i in deferred}
            for kept in fallback.passages:
                texts[index[kept.chunk_id]] = kept.text
                kept_spans[kept.chunk_id] = fallback.kept_spans[kept.chunk_id]
            after += fallback.tokens_after  # its passages' token counts, already measured
        out = [Passage(chunk_id=p.chunk_id, title=p.title, text=texts[i]) for i, p in enumerate(passages) if i in texts]
        result = CompressedContext(
            passages=out,
            tokens_before=before,
            tokens_after=after,
            kept_spans=kept_spans,
            # The whole method on the stage clock; the model share of it is inside (model_s).
            compute_s=max(sized.elapsed(), model_s),
            model_prompt_tokens=spent["prompt"],
            model_completion_tokens=spent["completion"],
            model=model_label(self.resources.generator) if spent["prompt"] else "",
        )
        return check(plan, work.report(result))


@dataclass
class _Walk:
    """Where `Summarize._walk` left the chunks: written or kept text, kept spans, the fallback's pool."""

    kept_spans: dict[int, list[Span]]
    left: int
    texts: dict[int, str] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)
    after: int = 0


class _Unwritten(Exception):  # noqa: N818 - a signal, not an error
    """A plan's walk reached a summary only a model call can write: where, its cap, the budget left."""

    def __init__(self, position: int, index: int, cap: int, left: int) -> None:
        super().__init__(position, index, cap, left)
        self.position, self.index, self.cap, self.left = position, index, cap, left


def completion_cap(budget: int, chunks: int) -> int:
    """The completion tokens one compress call's summaries may write together (enforced by `_walk`).

    Each summary's cap is its share and the shares it consumes add up to at most the budget, so
    the summaries write at most the budget plus, per summary, what it writes and does not leave
    in the context: a preamble stripped, a word cut at the cap, the end-of-sequence token.
    """
    return budget + SUMMARY_SLACK_TOKENS * chunks


def summary_words(budget: int) -> int:
    """The words a summary of `budget` tokens is asked for: ≈ 0.75 words per token for English BPE vocabularies."""
    return max(3, int(budget * 0.7))


def _openai_tokenizer(target: Any) -> Any:
    return getattr(getattr(target, "config", target), "tokenizer", None)


def chat_tokens_bound_for(target: Any, messages: list[dict[str, Any]]) -> int:
    """The prompt tokens the meter will report for `messages` on `target`: exact for a local model
    (its chat template) and the echo double; a bound for an endpoint (its tokenizer's, else UTF-8 bytes)."""
    from workers.runtime.local_lm import LoadedModel
    from workers.runtime.meter import EchoTarget, count_chat_tokens
    from workers.runtime.token_count import chat_template_ids, chat_tokens_bound

    if isinstance(target, LoadedModel):
        return len(chat_template_ids(target.tokenizer, messages))
    if isinstance(target, EchoTarget):
        return count_chat_tokens(target, messages)
    return chat_tokens_bound(_openai_tokenizer(target), messages)


def text_tokens_bound_for(target: Any, text: str) -> int:
    """`text`'s tokens for `target` alone: exact with its tokenizer, else UTF-8 bytes (a bound)."""
    from workers.runtime.local_lm import LoadedModel
    from workers.runtime.meter import EchoTarget
    from workers.runtime.token_count import text_tokens

    if isinstance(target, LoadedModel):
        return len(target.tokenizer.encode(text, add_special_tokens=False))
    if isinstance(target, EchoTarget):
        return len(text.split())
    return text_tokens(_openai_tokenizer(target), text)
