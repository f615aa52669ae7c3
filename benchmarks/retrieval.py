"""Retrieval benchmark through the real corpora pipeline.

    .venv/bin/python -m benchmarks.retrieval --dataset ../shared/data/nq-open-oracle --json out.json
    .venv/bin/python -m benchmarks.retrieval --dataset ../shared/data/nq-open-oracle --synthetic-chunks 10000 \\
        --json syn.json

Sets up Django on a temporary SQLite database and DATA_ROOT (or the configured database
with --use-configured-db), bulk-imports the passages (text = "title. text") as one
document each through ``documents_import_records`` (jobs run in-process), and evaluates
dense / bm25 / hybrid with ``chunk_search``. A question is answered at rank r when the
r-th distinct document retrieved is one of its gold passages (top 100 chunks searched).

Also measured in the same run: pipeline ingestion throughput (import -> all documents
ready: files, DB, parse, chunk, embed, FAISS, BM25, ledger) next to raw
``SentenceTransformer.encode`` on the same chunk texts (same model object, batch 64,
normalised), both warm; search latency (hybrid, k=10: index search + fusion + the DB
fetch of the hits, query embedding excluded) and query embedding latency, separately.

``--synthetic-chunks N``: instead, measure hybrid search latency on an N-chunk corpus
(real passage texts repeated for BM25, random unit vectors for FAISS: exact search cost
does not depend on the values), indexed through the same index-writing code.

torch runs on one thread (PARSIMONY_TORCH_THREADS=1), as the workers do by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import read_jsonl, setup_django, write_json

EVAL_DEPTH = 100
LATENCY_K = 10


def _setup_django(tmp: Path, use_configured_db: bool) -> None:
    os.environ["DATA_ROOT"] = str(tmp / "data")
    os.environ.setdefault("PARSIMONY_VAR_DIR", str(tmp / "var"))
    if not use_configured_db:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["PARSIMONY_TORCH_THREADS"] = "1"
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    setup_django(migrate=True)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 3) if values else 0.0


def _load(dataset: Path, limit: int | None) -> tuple[list[dict], list[dict]]:
    passages = read_jsonl(dataset / "passages.jsonl")
    # Questions without a gold passage (none expected in the shared sets) cannot be scored.
    questions = [q for q in read_jsonl(dataset / "questions.jsonl") if q.get("gold_pids")]
    if limit:
        questions = questions[:limit]
        gold = {pid for q in questions for pid in q["gold_pids"]}
        others = [p for p in passages if p["pid"] not in gold][:limit]
        passages = [p for p in passages if p["pid"] in gold] + others
    return passages, questions


def _team_and_corpus(name: str):
    from apps.accounts.services import team_create
    from apps.corpora.services import corpus_create

    team = team_create(name=f"bench {name}")
    corpus = corpus_create(team=team, name=name, chunk_tokens=256, overlap_tokens=32, index_type="flat")
    return team, corpus


def _warm_embedder(model_name: str):
    from django.conf import settings

    from workers.runtime.embedders import get_embedder

    embedder = get_embedder(model_name, threads=settings.PARSIMONY_TORCH_THREADS)
    embedder.encode(["warm-up sentence number one.", "and a second, slightly longer warm-up sentence."])
    embedder.encode_query("warm up")
    return embedder


def run_quality(dataset: Path, limit: int | None) -> tuple[dict, dict]:
    from apps.corpora.models import Chunk, Document, DocumentStatus
    from apps.corpora.selectors import chunk_search
    from apps.corpora.services import documents_import_records

    passages, questions = _load(dataset, limit)
    _, corpus = _team_and_corpus(f"bench-{dataset.name}")
    embedder = _warm_embedder(corpus.embedding_model)

    records = "".join(
        json.dumps({"pid": p["pid"], "title": p.get("title", ""), "text": f"{p.get('title', '')}. {p['text']}"}) + "\n"
        for p in passages
    ).encode("utf-8")
    started = time.perf_counter()
    documents_import_records(
        corpus=corpus, filename="passages.jsonl", data=records, text_field="text", title_field="title", id_field="pid"
    )
    ingest_s = time.perf_counter() - started
    not_ready = Document.objects.filter(corpus=corpus).exclude(status=DocumentStatus.READY).count()
    if not_ready:
        raise SystemExit(f"{not_ready} documents did not become ready")
    texts = list(Chunk.objects.filter(document__corpus=corpus).order_by("pk").values_list("text", flat=True))
    n_chunks = len(texts)

    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        embedder._model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
    raw_s = time.perf_counter() - started

    pid_of = dict(Document.objects.filter(corpus=corpus).values_list("pk", "external_id"))
    retrievers: dict[str, dict] = {}
    for name in ("dense", "bm25", "hybrid"):
        ranks: list[int | None] = []
        for question in questions:
            hits = chunk_search(corpus=corpus, query=question["question"], retriever=name, k=EVAL_DEPTH)
            seen: list[str] = []
            for hit in hits:
                pid = pid_of[hit.chunk.document_id]
                if pid not in seen:
                    seen.append(pid)
            gold = set(question["gold_pids"])
            ranks.append(next((i for i, pid in enumerate(seen, start=1) if pid in gold), None))
        n = len(ranks)
        retrievers[name] = {
            "recall@1": round(sum(1 for r in ranks if r and r <= 1) / n, 4),
            "recall@5": round(sum(1 for r in ranks if r and r <= 5) / n, 4),
            "recall@10": round(sum(1 for r in ranks if r and r <= 10) / n, 4),
            "mrr": round(sum(1.0 / r for r in ranks if r) / n, 4),
        }
        print(f"{name:7s} {retrievers[name]}", file=sys.stderr)

    search_ms: list[float] = []
    embed_ms: list[float] = []
    for question in questions:
        timings: dict = {}
        chunk_search(corpus=corpus, query=question["question"], retriever="hybrid", k=LATENCY_K, timings=timings)
        search_ms.append(timings["search_ms"])
        embed_ms.append(timings["embed_query_ms"])

    return {
        "dataset": dataset.name,
        "n_questions": len(questions),
        "retrievers": retrievers,
        "ingest_chunks_per_s": round(n_chunks / ingest_s, 2),
        "raw_encode_chunks_per_s": round(n_chunks / raw_s, 2),
        "search_p50_ms": _percentile(search_ms, 50),
        "search_p95_ms": _percentile(search_ms, 95),
        "embed_query_p50_ms": _percentile(embed_ms, 50),
    }, {
        "n_passages": len(passages), "n_chunks": n_chunks, "ingest_s": round(ingest_s, 2),
        "raw_encode_s": round(raw_s, 2),
    }


def run_synthetic(dataset: Path, n_chunks: int, n_queries: int = 300) -> dict:
    import numpy as np

    from apps.corpora import services
    from apps.corpora.models import Chunk, Document, DocumentStatus
    from apps.corpora.selectors import chunk_search

    passages, questions = _load(dataset, None)
    _, corpus = _team_and_corpus(f"bench-synthetic-{n_chunks}")
    embedder = _warm_embedder(corpus.embedding_model)
    document = Document.objects.create(
        corpus=corpus, title="synthetic", filename="synthetic.txt", sha256="0" * 64, status=DocumentStatus.PROCESSING
    )
    rows = [
        Chunk(
            document=document, ordinal=i,
            text=f"{passages[i % len(passages)]['title']}. {passages[i % len(passages)]['text']}",
        )
        for i in range(n_chunks)
    ]
    Chunk.objects.bulk_create(rows, batch_size=2000)
    from django.db.models import F

    Chunk.objects.filter(document=document).update(vector_id=F("pk"))
    ids = list(Chunk.objects.filter(document=document).order_by("pk").values_list("vector_id", flat=True))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ids), embedder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    services.index_apply(
        corpus=corpus, dimension=embedder.dimension, remove_ids=[], add_ids=ids, vectors=vectors,
        also_documents=[document.pk],
    )
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.READY)
    search_ms: list[float] = []
    embed_ms: list[float] = []
    for question in questions[:n_queries]:
        timings: dict = {}
        hits = chunk_search(corpus=corpus, query=question["question"], retriever="hybrid", k=LATENCY_K, timings=timings)
        assert hits
        search_ms.append(timings["search_ms"])
        embed_ms.append(timings["embed_query_ms"])
    return {
        "dataset": dataset.name,
        "synthetic_chunks": n_chunks,
        "n_queries": len(search_ms),
        "retriever": "hybrid",
        "k": LATENCY_K,
        "search_p50_ms": _percentile(search_ms, 50),
        "search_p95_ms": _percentile(search_ms, 95),
        "embed_query_p50_ms": _percentile(embed_ms, 50),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, type=Path, help="folder with passages.jsonl and questions.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="first N questions; their gold passages + N others")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--synthetic-chunks", type=int, default=None,
                        help="measure search latency at this corpus size instead")
    parser.add_argument("--use-configured-db", action="store_true",
                        help="use DATABASE_URL instead of a temporary SQLite file")
    args = parser.parse_args(argv)
    dataset = args.dataset.resolve()
    with tempfile.TemporaryDirectory(prefix="parsimony-bench-") as tmp:
        _setup_django(Path(tmp), args.use_configured_db)
        if args.synthetic_chunks:
            result = run_synthetic(dataset, args.synthetic_chunks)
            extra = {}
        else:
            result, extra = run_quality(dataset, args.limit)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, newline=True)
    print(json.dumps(result, indent=2))
    if extra:
        print(json.dumps(extra), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
