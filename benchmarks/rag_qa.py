"""RAG question answering through the real pipeline, several pipeline configs side by side.

    .venv/bin/python -m benchmarks.rag_qa --dataset ../shared/data/nq-open-oracle --limit 40 --json nq.json
    .venv/bin/python -m benchmarks.rag_qa --dataset ../shared/data/hotpotqa-dev-distractor-sample100 \\
        --limit 30 --json hp.json
    .venv/bin/python -m benchmarks.rag_qa --dataset ... --configs '[{"name": "top3", "top_k": 3}]'
    .venv/bin/python -m benchmarks.rag_qa --dataset ... --offset 30 --limit 40 ...  # questions 30-69 (a held-out split)

Datasets: the nq-open-oracle format (passages.jsonl + questions.jsonl with `answers`) — one corpus
holding the chosen questions' gold passages plus 5 distractor passages per question — and the
HotpotQA sample format (questions_with_paragraphs.jsonl) — one corpus per question holding its
own 10 paragraphs (the distractor setting). Passages are ingested through the real pipeline
(bulk import -> parse -> chunk -> embed -> FAISS + BM25) and every question goes through
`query_run_start` / `query_run_execute` exactly as an API call does, so the ledger prices it.

Reported per config: exact match and F1 (SQuAD normalisation), `contained` (the normalised gold
answer appears in the normalised output), `answer_in_context` (the gold answer is in the
retrieved passages the model saw), prompt / completion tokens and cost per question at the
configured model's price, the same tokens at a priced remote model (gpt-4o-mini by default),
cost-of-pass = mean cost per question / contained ("inf" when contained is 0), p50 latency,
`degenerate_rate` (the share of answers that loop: stopped by the degeneration guard, or ones the
guard would have stopped when a config turns it off, `workers.runtime.decoding.degenerate`),
`finish_reasons` and the mean `repetition_tokens_saved`, and what the run recorded against naive RAG
(`baseline_cost_per_question`, `savings_per_question`: the ledger's claim, `apps.costs.baseline`).
The extractive answer mode (`"prompting_strategy": "extractive_answer"`, a default config) generates
nothing: its tokens are 0 and its cost is the retrieval plus the sentence embeddings.

Quality signals (`workers.rag.quality`, docs/quality.md): the cosine weight (the one of 0, .25, .5,
.75, 1 with the best support AUROC) and the sentence threshold (the Youden-optimal cut of the support
score predicting `contained`) are calibrated on the **first half** of the questions and everything
below is reported on the **second half**: `support_auroc` (the support score ranking `contained`
answers first; `support_auroc_shipped`: with the shipped weights; `support_auroc_all_shipped` and
`evidence_auroc_all_shipped`: the shipped score and its evidence part over every question), `support_share_auroc` (the
supported-sentence share at the calibrated threshold), `retrieval_confidence_auroc` (runs with a
confidence only), `labels` ({label: share}) and `contained_by_label` (the accuracy within each);
`labels_all_shipped` is the share of each label with the shipped thresholds over every question.
Every question's answer and quality details (with its token log-probabilities and passages) go to
`<json>.rows.jsonl` (and, as each is answered, to `<json>.partial.rows.jsonl`); `--quality-from-rows
<rows.jsonl> --json out.json` recomputes these figures from it without generating again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from benchmarks.common import ROOT, read_jsonl, setup_django, write_json
from benchmarks.qa_metrics import contained, exact_match, f1_score, normalize_answer

DEFAULT_CONFIGS = [
    {"name": "naive-dense-top5", "retriever": "dense", "top_k": 5},
    {"name": "naive-dense-top10", "retriever": "dense", "top_k": 10},
    {"name": "extractive-dense-top5", "retriever": "dense", "top_k": 5, "prompting_strategy": "extractive_answer"},
]
CONFIG_DEFAULTS = {
    "retriever": "dense", "top_k": 5, "compression_method": "none", "compression_target": 1.0,
    "prompting_strategy": "naive", "model": "smollm2-135m-instruct", "max_output_tokens": 32, "system_prompt": "",
}


def _setup_django(tmp: Path) -> None:
    os.environ["DATA_ROOT"] = os.environ.get("PARSIMONY_BENCH_DATA_ROOT", str(tmp / "data"))
    os.environ.setdefault("PARSIMONY_VAR_DIR", str(tmp / "var"))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["PARSIMONY_TORCH_THREADS"] = os.environ.get("PARSIMONY_TORCH_THREADS", "1")
    os.environ["PARSIMONY_INPROCESS_SYNC"] = "1"
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    setup_django(migrate=True)


def _records_jsonl(passages: list[dict]) -> bytes:
    rows = [{"id": p["pid"], "title": p["title"], "text": p["text"]} for p in passages]
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()


def _load_tasks(dataset: Path, limit: int, offset: int = 0) -> tuple[str, list[dict]]:
    """[(question, answers, passages-for-its-corpus, corpus-key)] in one of the two formats; questions
    ``offset`` to ``offset + limit`` (a tuning split and a held-out one never share a question)."""
    if (dataset / "questions_with_paragraphs.jsonl").exists():
        tasks = []
        for row in read_jsonl(dataset / "questions_with_paragraphs.jsonl")[offset:offset + limit]:
            passages = [
                {"pid": p["pid"], "title": p["title"], "text": "".join(p["sentences"]).strip()}
                for p in row["paragraphs"]
            ]
            tasks.append(
                {"question": row["question"], "answers": [row["answer"]], "passages": passages, "corpus": row["qid"]}
            )
        return "hotpotqa", tasks
    passages = {p["pid"]: p for p in read_jsonl(dataset / "passages.jsonl")}
    questions = [q for q in read_jsonl(dataset / "questions.jsonl") if q.get("gold_pids")][offset:offset + limit]
    gold = [pid for q in questions for pid in q["gold_pids"]]
    others = [pid for pid in passages if pid not in set(gold)][: 5 * len(questions)]
    shared = [passages[pid] for pid in dict.fromkeys(gold + others)]
    tasks = [
        {"question": q["question"], "answers": q["answers"], "passages": shared, "corpus": "shared"}
        for q in questions
    ]
    return "nq", tasks


def _corpora(team, tasks: list[dict]) -> dict[str, object]:
    from apps.corpora.services import corpus_create, documents_import_records

    corpora = {}
    for task in tasks:
        key = task["corpus"]
        if key in corpora:
            continue
        corpus = corpus_create(team=team, name=f"bench-{key}"[:120])
        documents_import_records(
            corpus=corpus, filename="passages.jsonl", data=_records_jsonl(task["passages"]),
            text_field="text", title_field="title", id_field="id",
        )
        corpora[key] = corpus
    return corpora


def _loop_check(pipelines: dict):
    """answer -> whether the degeneration guard's rules find a loop in it (the model's tokens); for
    configs that turn the guard off. Remote models (no tokenizer here): never."""
    from apps.costs.metering import endpoint_target
    from workers.runtime.decoding import degenerate

    target = endpoint_target(next(iter(pipelines.values())).model_endpoint)
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        return lambda answer: False
    return lambda answer: degenerate(
        tokenizer.encode(answer, add_special_tokens=False),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )


WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # cosine weights tried on the calibration half
DECAYS = (1.0, 0.8, 0.6)  # rank decays tried on the calibration half


def _quality_report(rows: list[dict]) -> dict:
    """The quality signals' figures: the cosine weight and rank decay (the pair with the best support AUROC)
    and the sentence threshold (the Youden-optimal cut) calibrated on the first half of ``rows``, reported
    on the second half."""
    from workers.rag.quality import (
        SCORE_MODEL,
        Thresholds,
        auroc,
        calibrate_threshold,
        logprob_fields,
        position_mean,
        quality_label,
        question_entity_overlap,
        question_fit,
        rescore,
        span_in_passages,
        support_share,
    )

    def sentence_scores(row: dict, setting: tuple[float, float]) -> list[float]:
        return [rescore(sentence, *setting) for sentence in row["sentences"]]

    def evidence(row: dict, setting: tuple[float, float]) -> float:
        return position_mean(sentence_scores(row, setting)) or 0.0

    def score(row: dict, setting: tuple[float, float]) -> float:
        """The support score (``ScoreModel``) with the evidence rescored at ``setting``; rows saved before
        the log-probabilities were recorded use the model's default for them."""
        if not row["sentences"]:
            return 0.0
        return SCORE_MODEL.score(evidence=evidence(row, setting),
                                 logprob_mean=logprob_fields(row.get("token_logprobs"))["answer_logprob_mean"],
                                 fit=question_fit(row["question"], row["answer"]),
                                 grounding_gain=row.get("grounding_gain"),
                                 span=span_in_passages(row["answer"], row.get("passages") or []),
                                 entity_overlap=question_entity_overlap(row["question"], row["answer"]),
                                 words=float(len(row["answer"].split())))

    half = len(rows) // 2
    calibration, report = rows[:half], rows[half:]
    positives = [r["contained"] > 0 for r in calibration]
    settings = [(w, d) for w in WEIGHTS for d in DECAYS]
    by_setting = {s: auroc([score(r, s) for r in calibration], positives) for s in settings}
    setting = max(settings, key=lambda s: (by_setting[s] or 0.0, -abs(s[0] - 0.5), s[1]))
    cut = calibrate_threshold([score(r, setting) for r in calibration], positives,
                              candidates=[round(0.05 * i, 2) for i in range(1, 20)])
    thresholds = Thresholds(sentence=cut, cosine_weight=setting[0], rank_decay=setting[1])
    shares = [support_share(sentence_scores(r, setting), cut) for r in report]
    report_labels = [
        quality_label(finish_reason=r["finish_reason"], answer=r["answer"], support=share, thresholds=thresholds,
                      score=score(r, setting))
        for r, share in zip(report, shares, strict=True)
    ]
    labels = Counter(report_labels)
    contained_report = [r["contained"] > 0 for r in report]
    confident = [(r["retrieval_confidence"], r["contained"] > 0)
                 for r in report if r["retrieval_confidence"] is not None]
    # The shipped defaults (workers.rag.quality.Thresholds), applied to every question.
    defaults = Thresholds()
    shipped = (defaults.cosine_weight, defaults.rank_decay)
    stored = Counter(
        quality_label(finish_reason=r["finish_reason"], answer=r["answer"],
                      support=support_share(sentence_scores(r, shipped), defaults.sentence), thresholds=defaults,
                      score=score(r, shipped))
        for r in rows
    )
    contained_all = [r["contained"] > 0 for r in rows]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "support_auroc": rounded(auroc([score(r, setting) for r in report], contained_report)),
        "support_auroc_shipped": rounded(auroc([score(r, shipped) for r in report], contained_report)),
        # The shipped settings over every question (nothing calibrated here), and the evidence part alone.
        "support_auroc_all_shipped": rounded(auroc([score(r, shipped) for r in rows], contained_all)),
        "evidence_auroc_all_shipped": rounded(auroc([evidence(r, shipped) for r in rows], contained_all)),
        "support_share_auroc": rounded(auroc([s if s is not None else 0.0 for s in shares], contained_report)),
        "retrieval_confidence_auroc": rounded(
            auroc([c for c, _ in confident], [p for _, p in confident]) if confident else None
        ),
        "labels": {label: round(count / len(report), 4) for label, count in sorted(labels.items())},
        "contained_by_label": {
            label: round(sum(r["contained"] for r, got in zip(report, report_labels, strict=True)
                             if got == label) / count, 4)
            for label, count in sorted(labels.items())
        },
        "labels_all_shipped": {label: round(count / len(rows), 4) for label, count in sorted(stored.items())},
        "quality_split": {
            "calibration": f"questions 1-{half}", "report": f"questions {half + 1}-{len(rows)}",
            "cosine_weight": setting[0], "rank_decay": setting[1], "sentence_threshold": cut,
            "calibration_auroc_by_weight_and_decay": {f"{w}/{d}": rounded(a) for (w, d), a in by_setting.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--quality-from-rows", type=Path,
                        help="only recompute the quality figures from a <json>.rows.jsonl (nothing generated)")
    parser.add_argument("--configs", help="JSON list of pipeline configs (inline or a file path)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--offset", type=int, default=0, help="skip the first questions (a held-out split)")
    parser.add_argument("--prices", type=Path, help="the LiteLLM price file (default: ../shared/data/llm-prices/...)",
                        default=ROOT.parent / "shared" / "data" / "llm-prices"
                        / "litellm-1.110.2_model_prices_and_context_window.json")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--remote-price", default="gpt-4o-mini", help="price-book name for the 'same tokens at' column")
    args = parser.parse_args()
    if args.quality_from_rows:
        by_config: dict[str, list[dict]] = {}
        for row in read_jsonl(args.quality_from_rows):
            by_config.setdefault(row["config"], []).append(row)
        report = {name: _quality_report(rows) for name, rows in by_config.items()}
        write_json(args.json, {"rows": str(args.quality_from_rows), "configs": report})
        print(json.dumps(report, indent=2))
        return
    if args.dataset is None:
        parser.error("--dataset is required")
    configs = DEFAULT_CONFIGS
    if args.configs:
        raw = Path(args.configs).read_text() if Path(args.configs).exists() else args.configs
        configs = json.loads(raw)

    with tempfile.TemporaryDirectory(prefix="parsimony-rag-qa-") as tmp_name:
        _setup_django(Path(tmp_name))
        from django.core.management import call_command

        from apps.accounts.services import team_create
        from apps.costs.pricing import Usage, cost_of
        from apps.costs.services import price_current
        from apps.rag.models import QueryRun
        from apps.rag.services import pipeline_save, query_run_execute, query_run_start

        call_command("import_prices", str(args.prices), "--only", args.remote_price, verbosity=0)
        remote_price = price_current(model_name=args.remote_price)

        dataset_kind, tasks = _load_tasks(args.dataset, args.limit, args.offset)
        team = team_create(name="bench")
        started = time.perf_counter()
        corpora = _corpora(team, tasks)
        ingest_s = time.perf_counter() - started

        results: dict[str, dict] = {}
        per_config_rows: dict[str, list[dict]] = {}
        for config in configs:
            values = {**CONFIG_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}
            model = values.pop("model")
            pipelines = {}
            for key, corpus in corpora.items():
                pipelines[key] = pipeline_save(
                    team=team, name=f"{config['name']}-{len(pipelines)}"[:120], model_endpoint=model,
                    corpora=[corpus], **values,
                )
            rows = []
            looped = _loop_check(pipelines)
            for task in tasks:
                run = query_run_start(team=team, pipeline=pipelines[task["corpus"]], question=task["question"])
                run = query_run_execute(query_run_id=run.pk) if not QueryRun.objects.get(pk=run.pk).is_finished else run
                run.refresh_from_db()
                from apps.corpora.models import Chunk

                texts = dict(
                    Chunk.objects.filter(pk__in=[c["chunk_id"] for c in run.citations]).values_list("pk", "text")
                )
                passages = [texts.get(c["chunk_id"], "") for c in run.citations]
                context = " ".join(passages)
                remote = cost_of(
                    usage=Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens),
                    price=remote_price,
                )
                rows.append(
                    {
                        "em": exact_match(run.answer, task["answers"]),
                        "f1": f1_score(run.answer, task["answers"]),
                        "contained": contained(run.answer, task["answers"]),
                        "answer_in_context": contained(context, task["answers"]),
                        "prompt_tokens": run.prompt_tokens,
                        "completion_tokens": run.completion_tokens,
                        "cost": run.cost,
                        "remote_cost": remote,
                        "latency_s": run.latency_ms / 1000,
                        "status": run.status,
                        "answer": run.answer,
                        "finish_reason": run.finish_reason,
                        "degenerate": run.finish_reason == "repetition" or looped(run.answer),
                        "repetition_tokens_saved": run.repetition_tokens_saved,
                        "baseline_cost": run.baseline_cost,
                        "savings": run.savings,
                        "quality_label": run.quality_label,
                        "support_score": run.support_score,
                        "retrieval_confidence": run.retrieval_confidence,
                        "sentences": (run.quality or {}).get("sentences", []),
                        "answer_logprob_mean": (run.quality or {}).get("answer_logprob_mean"),
                        "answer_logprob_min": (run.quality or {}).get("answer_logprob_min"),
                        "token_logprobs": (run.quality or {}).get("token_logprobs", []),
                        # The grounding prefill's (PARSIMONY_QUALITY_GROUNDING; None when off).
                        "question_only_logprob_mean": (run.quality or {}).get("question_only_logprob_mean"),
                        "grounding_gain": (run.quality or {}).get("grounding_gain"),
                        "passages": passages,
                        "question": task["question"],
                        "gold": task["answers"],
                        "citations": [{k: c.get(k) for k in ("n", "score", "retrievers", "document_title", "snippet")}
                                      for c in run.citations],
                    }
                )
                # Saved as it goes (a run cut short keeps its answers): <json>.partial.rows.jsonl.
                with args.json.with_suffix(".partial.rows.jsonl").open("a") as partial:
                    saved = {k: v for k, v in rows[-1].items() if k not in ("cost", "remote_cost")}
                    partial.write(json.dumps({"config": config["name"], **saved}, default=str) + "\n")
                print(f"[{config['name']}] {len(rows)}/{len(tasks)} {normalize_answer(run.answer)[:60]!r} "
                      f"gold={task['answers'][0]!r} contained={rows[-1]['contained']:.0f}", file=sys.stderr)
            per_config_rows[config["name"]] = rows
            n = len(rows)
            accuracy = sum(r["contained"] for r in rows) / n
            mean_cost = sum((r["cost"] for r in rows), Decimal(0)) / n
            mean_remote = sum((r["remote_cost"] for r in rows), Decimal(0)) / n
            results[config["name"]] = {
                "em": round(sum(r["em"] for r in rows) / n, 4),
                "f1": round(sum(r["f1"] for r in rows) / n, 4),
                "contained": round(accuracy, 4),
                "answer_in_context": round(sum(r["answer_in_context"] for r in rows) / n, 4),
                "prompt_tokens": round(sum(r["prompt_tokens"] for r in rows) / n, 1),
                "completion_tokens": round(sum(r["completion_tokens"] for r in rows) / n, 1),
                "cost_per_question": float(mean_cost),
                "cost_per_question_at_remote_price": float(mean_remote),
                "remote_price_model": args.remote_price,
                "cost_of_pass": float(mean_cost) / accuracy if accuracy else "inf",
                "cost_of_pass_at_remote_price": float(mean_remote) / accuracy if accuracy else "inf",
                "p50_latency_s": round(statistics.median(r["latency_s"] for r in rows), 3),
                "failed": sum(r["status"] != "succeeded" for r in rows),
                "degenerate_rate": round(sum(r["degenerate"] for r in rows) / n, 4),
                "finish_reasons": dict(sorted(Counter(r["finish_reason"] for r in rows).items())),
                "repetition_tokens_saved": round(sum(r["repetition_tokens_saved"] for r in rows) / n, 1),
                "baseline_cost_per_question": float(sum((r["baseline_cost"] for r in rows), Decimal(0)) / n),
                "savings_per_question": float(sum((r["savings"] for r in rows), Decimal(0)) / n),
                **_quality_report(rows),
                "config": {**values, "model": model},
            }
        summary = {
            "dataset": args.dataset.name,
            "dataset_format": dataset_kind,
            "n": len(tasks),
            "offset": args.offset,
            "ingest_s": round(ingest_s, 1),
            "torch_threads": int(os.environ["PARSIMONY_TORCH_THREADS"]),
            "configs": results,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, summary)
    # Every question's answer and quality details, to study the signals without generating again.
    with args.json.with_suffix(".rows.jsonl").open("w") as out:
        for name, rows in per_config_rows.items():
            for row in rows:
                out.write(json.dumps({"config": name, **{k: v for k, v in row.items() if k not in (
                    "cost", "remote_cost")}}, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
