"""Context compression side by side: token reduction, gold-answer retention, end-to-end answers, cost.

    # defaults: every method and baseline at targets 0.5 0.33 0.2, contexts = top-5 retrieved passages
    .venv/bin/python -m benchmarks.compression --dataset ../shared/data/squad-v2-dev-sample --limit 100 \
        --answer-limit 30 --method-limit summarize=10 --json var/bench/compression-squad.json
    .venv/bin/python -m benchmarks.compression --dataset ../shared/data/hotpotqa-dev-distractor-sample100 \
        --targets 0.33 --methods truncation random_drop extractive --answer-limit 0 --json var/bench/hp.json
    # the anchors' SQuAD setting (gold paragraph + 4 random ones), retention only
    .venv/bin/python -m benchmarks.compression --dataset ../shared/data/squad-v2-dev-sample --contexts gold+random \
        --targets 0.33 --answer-limit 0 --json var/bench/squad-anchors.json

Retention follows shared/notes/anchors.md so the numbers compare with its baselines: the share
of examples whose normalised gold answer (SQuAD normalisation) is still a substring of the
compressed context, over the examples where it was in the full context; tokens are counted with
the SmolLM2 tokenizer on passage texts (titles are not counted and not searched).

Contexts, `--contexts retrieved` (default): the top-5 passages (`--top-k`) by MiniLM cosine,
best first, as a pipeline's retriever hands them over. HotpotQA: of the question's own 10
paragraphs (`--contexts given`: all 10 in the file's shuffled order instead; gold_in_context
says whether both supporting paragraphs made the top k). SQuAD-format datasets
(squad-v2-dev-sample, nq-open-oracle), the answerable questions: over the dataset's whole
passage pool (passage text "title. text", the project's embedder loader; vectors cached under
var/bench/pool-vectors), each example noting whether its gold passage is among them
(`gold_in_context`); or `--contexts gold+random`: the gold paragraph plus 4 random others,
shuffled (seed 0) — the anchors' setting.

Methods: the baselines `truncation` (the first N tokens of the concatenated context),
`random_drop` (random sentences, seed = example index, until the budget) and
`embeddings_filter` (LangChain's EmbeddingsFilter over the context's sentences with the
project's MiniLM wrapped as a LangChain `Embeddings`; its similarity scores rank the sentences
and the top ones are kept until the token budget, original order), then every registered
compression method (`none` runs once, as the uncompressed reference, `extractive`,
`semantic_prune`, `surprisal_prune`, `summarize`); a variant runs under a label, e.g.
`--methods surprisal_prune:pure --params '{"surprisal_prune:pure": {"fine_keep": null}}'`. Slow
methods can run on the first N examples only (`--method-limit summarize=10`); each row then also
carries `subset_retention` of every other method on exactly those examples.

LangChain is not a project dependency. The baseline needs it in var/bench-deps (added to
sys.path, after the project's own packages, only when `embeddings_filter` is requested):

    .venv/bin/python -m pip install --target var/bench-deps -r benchmarks/requirements-langchain.txt

End to end (`--answer-limit N`, default 30; 0 skips it): the first N examples of every method
and target (`--answer-targets`, `--answer-methods`: only those) are answered by
SmolLM2-135M-Instruct from the compressed context with the project's naive RAG prompt (the
anchors' instruction wording), greedy, ≤ 32 new tokens; `em`, `f1` and `contained` (gold answer in the output) as in
benchmarks/qa_metrics.py.

Against truncation: every method row run beside `truncation` at the same target carries
`vs_truncation` = {won, lost, p_two_sided}: the questions whose answer it keeps and truncation
loses, the other way round, and the exact sign test on those pairs (benchmarks/paired.py). A
retention a question or two above truncation's is a win on that sample, not a proven one.

Cost: `net_saving_per_1k_usd` = {model: 1000 × (mean context tokens removed × the model's input
price) − 1000 × mean compression cost per query} for the `--price-models` (default gpt-4o-mini,
gpt-4o; prices read from the shared LiteLLM table, `--price-file`). The compression cost is what
the ledger would bill it: its CPU seconds at the project's default local CPU price
(apps/costs/defaults.CPU_PER_SECOND) — the local SmolLM2 the methods run has no per-token price,
so its tokens cost only their seconds. Rows whose method used model tokens also carry
`net_saving_per_1k_usd_remote_compressor`: the same with those tokens priced at the remote model
(a pipeline on that endpoint summarizes with it). Tokens removed are SmolLM2 tokens: a remote
tokenizer counts somewhat differently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_jsonl, write_json
from benchmarks.paired import paired_vs
from benchmarks.qa_metrics import contained, exact_match, f1_score
from workers.compression.text import sentence_spans, token_budget
from workers.prompting.base import Passage

BASELINES = ("truncation", "random_drop", "embeddings_filter")
DEFAULT_METHODS = ["truncation", "random_drop", "embeddings_filter", "none", "extractive", "semantic_prune",
                   "surprisal_prune", "summarize"]
DEFAULT_TARGETS = [0.5, 0.33, 0.2]
DEFAULT_LIMITS = {"summarize": 10}
DEFAULT_PRICE_FILE = (
    ROOT.parent / "shared" / "data" / "llm-prices" / "litellm-1.110.2_model_prices_and_context_window.json"
)
DEFAULT_PRICE_MODELS = ["gpt-4o-mini", "gpt-4o"]
BENCH_DEPS = ROOT / "var" / "bench-deps"
LANGCHAIN_INSTALL = ".venv/bin/python -m pip install --target var/bench-deps -r benchmarks/requirements-langchain.txt"
MAX_NEW_TOKENS = 32


# --------------------------------------------------------------------------- contexts


def _pool_vectors(dataset: Path, texts: list[str], embedder: Any, cache_dir: Path | None) -> Any:
    """(N, D) MiniLM vectors of the pool's passages, cached on disk by content hash."""
    import numpy as np

    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"{dataset.name}-{key}.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = embedder.encode(texts)
    print(f"embedded {len(texts)} pool passages in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def load_examples(
    dataset: Path,
    limit: int | None,
    *,
    contexts: str = "retrieved",
    top_k: int = 5,
    distractors: int = 4,
    seed: int = 0,
    offset: int = 0,
    embedder: Any = None,
    vector_cache: Path | None = None,
) -> tuple[str, list[dict]]:
    """[{id, question, answers, passages: [Passage], gold_in_context}] for a HotpotQA-sample or SQuAD/NQ folder.

    `contexts="retrieved"` (default, `embedder` needed): the top_k passages by MiniLM cosine, best
    first — over the dataset's whole pool (SQuAD/NQ) or over the question's own 10 paragraphs
    (HotpotQA). `"given"` (HotpotQA): all 10 paragraphs in the file's shuffled order.
    `"gold+random"` (SQuAD/NQ): the gold paragraph and `distractors` random others.
    Questions `offset` .. `offset + limit` (a disjoint split for tuning: `--offset`).
    """
    import numpy as np

    end = None if limit is None else offset + limit
    if (dataset / "questions_with_paragraphs.jsonl").exists():
        if contexts not in ("retrieved", "given"):
            raise ValueError(f"HotpotQA contexts must be 'retrieved' or 'given', got {contexts!r}")
        rows = read_jsonl(dataset / "questions_with_paragraphs.jsonl")[offset:end]
        examples = []
        for row in rows:
            paragraphs = row["paragraphs"]
            order = list(range(len(paragraphs)))
            if contexts == "retrieved":
                texts = [f"{p['title']}. {''.join(p['sentences']).strip()}" for p in paragraphs]
                scores = embedder.encode(texts) @ embedder.encode([row["question"]])[0]  # (10,) cosine
                order = [int(i) for i in np.argsort(-scores, kind="stable")[:top_k]]
            passages = [
                Passage(chunk_id=n, title=paragraphs[i]["title"], text="".join(paragraphs[i]["sentences"]).strip())
                for n, i in enumerate(order)
            ]
            # Both supporting paragraphs among the chosen ones (a 2-hop question needs both).
            chosen = {paragraphs[i].get("pid") for i in order}
            examples.append({"id": row["qid"], "question": row["question"], "answers": [row["answer"]],
                             "passages": passages, "gold_in_context": set(row.get("gold_pids") or []) <= chosen})
        return "hotpotqa", examples
    if contexts not in ("retrieved", "gold+random"):
        raise ValueError(f"contexts must be 'retrieved' or 'gold+random', got {contexts!r}")
    pool = read_jsonl(dataset / "passages.jsonl")
    passages = {p["pid"]: p for p in pool}
    pids = sorted(passages)
    questions = [
        q for q in read_jsonl(dataset / "questions.jsonl")
        # unanswerable (SQuAD 2.0 lists [""]): no gold answer to retain
        if not q.get("is_impossible") and any(a.strip() for a in q.get("answers", [])) and q.get("gold_pids")
    ][offset:end]
    if contexts == "retrieved":
        texts = [f"{p['title']}. {p['text']}" if p.get("title") else p["text"] for p in pool]
        vectors = _pool_vectors(dataset, texts, embedder, vector_cache)
        queries = embedder.encode([q["question"] for q in questions])
        scores = queries @ vectors.T  # (Q, N) cosine: both normalised
        chosen_per_q = [[pool[i]["pid"] for i in np.argsort(-row, kind="stable")[:top_k]] for row in scores]
    else:
        rng = random.Random(seed)
        chosen_per_q = []
        for q in questions:
            gold = q["gold_pids"][0]
            chosen = [gold, *rng.sample([pid for pid in pids if pid != gold], distractors)]
            rng.shuffle(chosen)
            chosen_per_q.append(chosen)
    examples = []
    for q, chosen in zip(questions, chosen_per_q, strict=True):
        examples.append({
            "id": q["qid"],
            "question": q["question"],
            "answers": q["answers"],
            "passages": [Passage(chunk_id=n, title=passages[pid].get("title", ""), text=passages[pid]["text"])
                         for n, pid in enumerate(chosen)],
            "gold_in_context": bool(set(q["gold_pids"]) & set(chosen)),
        })
    return dataset.name, examples


def context_text(passages: list[Passage]) -> str:
    return "\n\n".join(p.text for p in passages)


# --------------------------------------------------------------------------- baselines


def truncation(passages: list[Passage], budget: int, tokenizer: Any) -> str:
    ids = tokenizer.encode(context_text(passages), add_special_tokens=False)
    return tokenizer.decode(ids[:budget])


def truncation_passages(passages: list[Passage], text: str) -> list[Passage]:
    """The truncated text split back into its passages (so the prompt keeps their titles)."""
    pieces = [piece.strip() for piece in text.split("\n\n")]
    if len(pieces) > len(passages):  # a passage held a blank line itself: keep it as one block
        pieces = pieces[: len(passages) - 1] + ["\n\n".join(pieces[len(passages) - 1 :])]
    return [Passage(chunk_id=p.chunk_id, title=p.title, text=piece)
            for p, piece in zip(passages, pieces, strict=False) if piece]


def sentence_units(passages: list[Passage]) -> list[tuple[int, tuple[int, int]]]:
    """(passage index, sentence span) for every sentence of the context, in order."""
    return [(i, s) for i, p in enumerate(passages) for s in sentence_spans(p.text)]


def select_within_budget(order: Sequence[int], sizes: Sequence[int], budget: int) -> list[int]:
    """Walk the units in `order` (best first), keep each that still fits; the kept ones in original order."""
    keep, left = [], budget
    for u in order:
        if sizes[u] <= left:
            keep.append(u)
            left -= sizes[u]
    return sorted(keep)


def kept_passages(passages: list[Passage], units: list[tuple[int, tuple[int, int]]], keep: list[int]) -> list[Passage]:
    """The kept sentences joined back into their passages (titles kept); empty passages dropped."""
    kept: list[list[str]] = [[] for _ in passages]
    for u in keep:
        i, (a, b) = units[u]
        kept[i].append(passages[i].text[a:b])
    return [Passage(chunk_id=p.chunk_id, title=p.title, text=" ".join(k)) for p, k in zip(passages, kept, strict=True)
            if k]


def random_drop(passages: list[Passage], budget: int, count_tokens: Callable[[str], int], seed: int) -> list[Passage]:
    units = sentence_units(passages)
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    sizes = [count_tokens(passages[i].text[a:b]) for i, (a, b) in units]
    return kept_passages(passages, units, select_within_budget(order, sizes, budget))


def langchain_embeddings(embedder: Any) -> Any:
    """The project's MiniLM embedder as a LangChain `Embeddings` (LangChain must be importable)."""
    from langchain_core.embeddings import Embeddings

    class ProjectEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.encode(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embedder.encode([text])[0].tolist()

    return ProjectEmbeddings()


def import_embeddings_filter() -> Any:
    """LangChain's EmbeddingsFilter class, from var/bench-deps (never a project dependency)."""
    if BENCH_DEPS.exists() and str(BENCH_DEPS) not in sys.path:
        sys.path.append(str(BENCH_DEPS))  # after .venv: its numpy/pydantic win over any copy in there
    try:
        from langchain_classic.retrievers.document_compressors import EmbeddingsFilter
    except ImportError:
        try:
            from langchain.retrievers.document_compressors import EmbeddingsFilter
        except ImportError:
            raise SystemExit(
                f"the embeddings_filter baseline needs LangChain; install it with\n    {LANGCHAIN_INSTALL}"
            ) from None
    return EmbeddingsFilter


def embeddings_filter(
    passages: list[Passage], query: str, budget: int, count_tokens: Callable[[str], int], lc_filter: Any
) -> list[Passage]:
    """LangChain's EmbeddingsFilter at a token budget: its query-similarity ranking of the sentences,
    top ones until the budget."""
    from langchain_core.documents import Document

    units = sentence_units(passages)
    docs = [Document(page_content=passages[i].text[a:b], metadata={"unit": u}) for u, (i, (a, b)) in enumerate(units)]
    if not docs:
        return []
    # No k and a threshold below any cosine: the filter scores every sentence (state
    # "query_similarity_score"); the budget, not k, decides how many of the best are kept.
    scored = lc_filter.compress_documents(docs, query)
    ranked = sorted(scored, key=lambda d: -float(d.state["query_similarity_score"]))  # stable: ties in text order
    order = [d.metadata["unit"] for d in ranked]
    sizes = [count_tokens(passages[i].text[a:b]) for i, (a, b) in units]
    return kept_passages(passages, units, select_within_budget(order, sizes, budget))


# --------------------------------------------------------------------------- money


def load_prices(path: Path, models: Sequence[str]) -> dict[str, dict[str, Decimal]]:
    """{model: {"input": USD per token, "output": USD per token}} from a LiteLLM price table."""
    table = json.loads(Path(path).read_text())
    prices = {}
    for model in models:
        entry = table.get(model)
        if not isinstance(entry, dict) or entry.get("input_cost_per_token") is None:
            raise SystemExit(f"{path}: no per-token price for {model!r}")
        prices[model] = {
            "input": Decimal(str(entry["input_cost_per_token"])),
            "output": Decimal(str(entry.get("output_cost_per_token") or 0)),
        }
    return prices


def net_saving_per_1k(
    removed_tokens: float, compression_cost: Decimal, input_price: Decimal, queries: int = 1000
) -> float:
    """USD saved per `queries` queries: the removed prompt tokens at `input_price` minus the compression's own cost."""
    saving = Decimal(queries) * (Decimal(str(removed_tokens)) * input_price - compression_cost)
    return round(float(saving), 6)


def local_cpu_price() -> Decimal:
    """USD per CPU-second for local compute: the price-book default the ledger bills local models at."""
    from apps.costs.defaults import CPU_PER_SECOND

    return CPU_PER_SECOND


# --------------------------------------------------------------------------- the run


def chunk_outcomes(passages: list[Passage], out: Any) -> dict[str, int]:
    """Per input chunk: kept whole, partly kept (spans), rewritten (a summary: no spans), or dropped."""
    present = {p.chunk_id for p in out.passages}
    counts = {"whole": 0, "partial": 0, "rewritten": 0, "dropped": 0}
    for p in passages:
        spans = out.kept_spans.get(p.chunk_id, [])
        if p.chunk_id not in present:
            counts["dropped"] += 1
        elif not spans:
            counts["rewritten"] += 1
        elif spans == [(0, len(p.text))]:
            counts["whole"] += 1
        else:
            counts["partial"] += 1
    return counts


def _mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 4) if values else None


def main() -> None:  # noqa: C901  -- the experiment driver, one flag after another; split it when it next changes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="examples (default: all)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--targets", "--target", nargs="+", type=float, default=DEFAULT_TARGETS, dest="targets")
    parser.add_argument("--method-limit", action="append", default=[], metavar="METHOD=N",
                        help="run METHOD on the first N examples only (default: summarize=10)")
    parser.add_argument("--answer-limit", type=int, default=30,
                        help="answer the first N examples of every method and target with SmolLM2 (0: none)")
    parser.add_argument("--answer-targets", nargs="+", type=float, default=None,
                        help="answer only at these targets (default: every target; the `none` row always answers)")
    parser.add_argument("--answer-methods", nargs="+", default=None,
                        help="answer only for these methods (default: every method)")
    parser.add_argument("--contexts", choices=["retrieved", "gold+random", "given"], default="retrieved",
                        help="top-k retrieved (SQuAD/NQ: from the pool; HotpotQA: of the question's 10 paragraphs), "
                             "gold + 4 random (SQuAD/NQ, the anchors'), or given (HotpotQA: all 10, file order)")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many questions (a disjoint split, e.g. to tune a method's parameters on)")
    parser.add_argument("--only", type=int, nargs="+", default=None, metavar="INDEX",
                        help="run just these questions (0-based positions in the dataset's question list, "
                             "--offset ignored): e.g. the questions whose contexts a change touches")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--price-file", type=Path, default=DEFAULT_PRICE_FILE)
    parser.add_argument("--price-models", nargs="+", default=DEFAULT_PRICE_MODELS)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=Path(os.environ.get("PARSIMONY_MODEL_CACHE_DIR", ROOT / "var" / "test-models")),
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="an on-disk compression cache for the methods (default: none, every call cold)")
    parser.add_argument("--vector-cache", type=Path, default=ROOT / "var" / "bench" / "pool-vectors",
                        help="where the retrieval pool's vectors are kept between runs")
    parser.add_argument("--passes", type=int, default=1,
                        help="run every method this many times; with --cache-dir the later passes are warm")
    parser.add_argument(
        "--params", default="{}", help="JSON {method: {param: value}} passed to the method constructors"
    )
    args = parser.parse_args()

    from workers.compression import CompressionCache, get_method
    from workers.compression.resources import Resources
    from workers.prompting.naive import NaivePrompting
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads
    from workers.runtime.meter import generate

    set_torch_threads(args.threads)
    limits = dict(DEFAULT_LIMITS)
    for item in args.method_limit:
        name, _, n = item.partition("=")
        limits[name] = int(n)
    params = json.loads(args.params)
    prices = load_prices(args.price_file, args.price_models)
    cpu_price = local_cpu_price()
    lc_filter = None
    if "embeddings_filter" in args.methods:
        EmbeddingsFilter = import_embeddings_filter()  # noqa: N806 (a class)

    lm = load_causal_lm("smollm2-135m-instruct", cache_dir=args.model_cache, device="cpu")
    tokenizer = lm.tokenizer

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    cache = CompressionCache(args.cache_dir) if args.cache_dir is not None else None
    resources = Resources(generator=lm, scorer=lm, model_cache_dir=args.model_cache, cache=cache)
    embedder = resources.get_embedder()
    embedder.encode(["warm up"])  # so the first example's latency is not the load time
    if args.only:
        args.offset, args.limit = 0, max(args.only) + 1
    dataset_kind, examples = load_examples(args.dataset, args.limit, contexts=args.contexts, top_k=args.top_k,
                                           offset=args.offset, embedder=embedder, vector_cache=args.vector_cache)
    if args.only:
        missing = [i for i in args.only if not 0 <= i < len(examples)]
        if missing:
            parser.error(f"--only: no question at {missing} ({len(examples)} questions in {args.dataset})")
        # Same contexts as a full run (retrieval does not depend on which questions run); random_drop's
        # seed is the position in this list, so its rows differ from a full run's.
        examples = [examples[i] for i in sorted(set(args.only))]
    methods = {}
    for name in args.methods:
        if name not in BASELINES:
            # "surprisal_prune:pure" runs the registered method under another label, so variants
            # (with their own --params entry) can sit side by side.
            methods[name] = get_method(name.split(":")[0], resources=resources, **params.get(name, {}))
    if "embeddings_filter" in args.methods:
        lc_filter = EmbeddingsFilter(embeddings=langchain_embeddings(embedder), k=None, similarity_threshold=-2.0)

    full = []
    for ex in examples:
        counts = [count_tokens(p.text) for p in ex["passages"]]
        full.append({"tokens": sum(counts), "has_answer": bool(contained(context_text(ex["passages"]), ex["answers"]))})
    prompting = NaivePrompting()

    def answer(question: str, passages: list[Passage], answers: list[str]) -> dict:
        messages = prompting.build_messages(system_prompt="", question=question, passages=passages)
        result = generate(target=lm, messages=messages, max_output_tokens=MAX_NEW_TOKENS, wall_time_limit_s=300)
        return {"em": exact_match(result.text, answers), "f1": f1_score(result.text, answers),
                "contained": contained(result.text, answers), "answer": result.text,
                "prompt_tokens": result.prompt_tokens, "answer_s": result.wall_s}

    def run_pass(name: str, target: float, n: int, answer_n: int) -> list[dict]:
        """One pass of a method over the first n examples: retention, kept share, time; answers on
        the first answer_n."""
        rows = []
        for k, ex in enumerate(examples[:n]):
            budget = token_budget(target, full[k]["tokens"])
            started = time.perf_counter()
            model_tokens = 0
            outcome = {}
            if name == "truncation":
                text = truncation(ex["passages"], budget, tokenizer)
                kept = truncation_passages(ex["passages"], text)
                pieces = [text]
            elif name == "random_drop":
                kept = random_drop(ex["passages"], budget, count_tokens, seed=k)
                pieces = [p.text for p in kept]
            elif name == "embeddings_filter":
                kept = embeddings_filter(ex["passages"], ex["question"], budget, count_tokens, lc_filter)
                pieces = [p.text for p in kept]
            else:
                out = methods[name].compress(query=ex["question"], passages=ex["passages"], target=target,
                                             count_tokens=count_tokens)
                kept = out.passages
                pieces = [p.text for p in kept]
                model_tokens = out.model_prompt_tokens + out.model_completion_tokens
                outcome = chunk_outcomes(ex["passages"], out)
            seconds = time.perf_counter() - started
            joined = "\n\n".join(pieces)
            # Passage texts counted one by one, like tokens_before (the separators are the prompt's).
            after = sum(count_tokens(piece) for piece in pieces)
            row = {
                "id": ex["id"], "seconds": seconds, "kept_share": after / max(full[k]["tokens"], 1),
                "removed_tokens": max(full[k]["tokens"] - after, 0),
                "retained": bool(contained(joined, ex["answers"])), "has_answer": full[k]["has_answer"],
                "model_tokens": model_tokens, "over_budget": after > budget * 1.02 + 2, "chunks": outcome,
            }
            if k < answer_n:
                row.update(answer(ex["question"], kept, ex["answers"]))
            rows.append(row)
            print(f"[{name} @{target}] {k + 1}/{n} kept={row['kept_share']:.2f} retained={row['retained']} "
                  f"{seconds:.2f}s" + (f" contained={row['contained']:.0f}" if "contained" in row else ""),
                  file=sys.stderr)
        return rows

    results: dict[tuple[str, float], list[dict]] = {}
    cold: dict[tuple[str, float], list[float]] = {}

    def retention(rows: list[dict], ids: set[str] | None = None) -> float | None:
        pool = [r for r in rows if r["has_answer"] and (ids is None or r["id"] in ids)]
        return round(sum(r["retained"] for r in pool) / len(pool), 4) if pool else None

    def build_table() -> list[dict]:
        table = []
        for (name, target), rows in results.items():
            table.append(table_row(name, target, rows))
        return table

    def table_row(name: str, target: float, rows: list[dict]) -> dict:
        ids = {r["id"] for r in rows}
        kept = statistics.mean(r["kept_share"] for r in rows)
        answered = [r for r in rows if "contained" in r]
        cpu_s = statistics.mean(r["seconds"] for r in rows)
        removed = statistics.mean(r["removed_tokens"] for r in rows)
        model_tokens = statistics.mean(r["model_tokens"] for r in rows)
        # The ledger bills no compress stage for "none"; local model tokens have no per-token price.
        compression_cost = Decimal(0) if name == "none" else Decimal(str(cpu_s)) * cpu_price
        row = {
            "method": name,
            "target": target,
            "n": len(rows),
            "n_with_answer": sum(r["has_answer"] for r in rows),
            "token_reduction": round(1 - kept, 4),
            "answer_retention": retention(rows),
            "em": _mean([r["em"] for r in answered]),
            "f1": _mean([r["f1"] for r in answered]),
            "contained": _mean([r["contained"] for r in answered]),
            "answer_n": len(answered),
            "latency_ms_p50": round(1000 * statistics.median(r["seconds"] for r in rows), 1),
            "net_saving_per_1k_usd": {m: net_saving_per_1k(removed, compression_cost, p["input"])
                                      for m, p in prices.items()},
            "kept_share": round(kept, 4),
            "removed_tokens_mean": round(removed, 1),
            "compression_cost_per_1k_usd": round(float(1000 * compression_cost), 6),
            "over_budget": sum(r["over_budget"] for r in rows),
            "latency_ms_mean": round(1000 * cpu_s, 1),
            # Only with --passes > 1: the first pass's latency (the rows above are the last pass).
            **({"latency_ms_p50_first_pass": round(1000 * statistics.median(cold[(name, target)]), 1)}
               if (name, target) in cold else {}),
            "model_tokens_mean": round(model_tokens, 1),
            "answer_prompt_tokens_mean": _mean([r["prompt_tokens"] for r in answered]),
            "answer_latency_ms_p50": round(1000 * statistics.median(r["answer_s"] for r in answered), 1)
            if answered else None,
        }
        if model_tokens:
            # Had the pipeline's remote model done the compression's model work (summaries are written by it).
            row["net_saving_per_1k_usd_remote_compressor"] = {
                m: net_saving_per_1k(removed, compression_cost + Decimal(str(model_tokens)) * p["input"], p["input"])
                for m, p in prices.items()
            }
        if any(r["chunks"] for r in rows):
            # What happened to the chunks, summed over examples (see chunk_outcomes).
            row["chunks"] = {
                k: sum(r["chunks"].get(k, 0) for r in rows) for k in ("whole", "partial", "rewritten", "dropped")
            }
        baseline = results.get(("truncation", target))
        if name not in ("none", "truncation") and baseline is not None:
            # Over the questions with the answer in the full context, as retention is.
            row["vs_truncation"] = paired_vs({r["id"]: r["retained"] for r in baseline if r["has_answer"]},
                                             {r["id"]: r["retained"] for r in rows if r["has_answer"]})
        if len(rows) < len(examples):
            row["subset_retention"] = {
                other: retention(other_rows, ids)
                for (other, other_target), other_rows in results.items()
                if other_target in (target, 1.0) and other != name
            }
        return row
    def write_summary(table: list[dict], done: bool) -> None:
        summary = summary_head(done) | {"rows": table}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, summary)

    def summary_head(done: bool) -> dict:
        return {
            "dataset": args.dataset.name,
            "n": len(examples),
            "format": dataset_kind,
            "contexts": {"retrieved": f"top-{args.top_k} retrieved (MiniLM)", "gold+random": "gold + 4 random",
                         "given": "all 10 paragraphs, file order"}[args.contexts],
            "offset": args.offset,
            "only": sorted(set(args.only)) if args.only else None,
            "gold_in_context": (
                round(statistics.mean(ex["gold_in_context"] for ex in examples), 4) if examples else None
            ),
            "n_with_answer": sum(f["has_answer"] for f in full),
            "mean_context_tokens": round(statistics.mean(f["tokens"] for f in full), 1) if full else None,
            "answer_limit": args.answer_limit,
            "torch_threads": args.threads,
            "prices_usd_per_mtok": {m: {k: float(v * 1_000_000) for k, v in p.items()} for m, p in prices.items()},
            "price_file": args.price_file.name,
            "local_cpu_usd_per_s": float(cpu_price),
            "params": {name: getattr(m, "params", lambda: {})() for name, m in methods.items()},
            "complete": done,
        }

    for target in args.targets:
        for name in args.methods:
            if name == "none" and target != args.targets[0]:
                continue  # the identity: one reference row, whatever the target
            n = min(len(examples), limits.get(name, len(examples)))
            key = (name, 1.0 if name == "none" else target)
            for pass_no in range(args.passes):
                if pass_no == 1:  # with --cache-dir, later passes read what the first one cached
                    cold[key] = [r["seconds"] for r in results[key]]
                # Only the last pass answers (answers do not depend on the cache).
                answers = (name == "none" or args.answer_targets is None or target in args.answer_targets) and (
                    args.answer_methods is None or name in args.answer_methods)
                results[key] = run_pass(name, key[1], n,
                                        args.answer_limit if answers and pass_no == args.passes - 1 else 0)
            write_summary(build_table(), done=False)  # a long run leaves what it has measured so far
    table = build_table()
    write_summary(table, done=True)
    models = list(prices)
    print(f"{'method':<20} {'target':>6} {'n':>4} {'cut':>6} {'retain':>7} {'EM':>5} {'F1':>6} {'cont':>5} "
          f"{'p50 ms':>9} {'vs trunc':>13} " + " ".join(f"{'$/1k ' + m:>18}" for m in models))

    def vs_truncation(row: dict) -> str:
        vs = row.get("vs_truncation")
        return "-" if vs is None else f"+{vs['won']}/-{vs['lost']} p={vs['p_two_sided']:.2f}"

    for row in table:
        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "-" if value is None else format(value, spec)

        print(f"{row['method']:<20} {row['target']:>6} {row['n']:>4} {row['token_reduction']:>6.3f} "
              f"{fmt(row['answer_retention']):>7} {fmt(row['em'], '.2f'):>5} {fmt(row['f1']):>6} "
              f"{fmt(row['contained'], '.2f'):>5} {row['latency_ms_p50']:>9.1f} {vs_truncation(row):>13} "
              + " ".join(f"{row['net_saving_per_1k_usd'][m]:>18.5f}" for m in models))


if __name__ == "__main__":
    main()
