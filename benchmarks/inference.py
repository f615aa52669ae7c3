"""Local inference speed: our decode loop (each weight dtype) vs llama.cpp on the same GGUF, and batching.

    .venv/bin/python -m benchmarks.inference --dataset /work/shared/data/nq-open-oracle --json inference.json

llama.cpp runs in its own venv (never the project's): build it once with
    python3.11 -m venv var/bench-llamacpp
    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
      var/bench-llamacpp/bin/pip install -r benchmarks/requirements-llamacpp.txt
(``--llama-python`` names that venv's python; without it the llama.cpp rows are skipped and said so).

In one run, on one machine, with the same thread count for both (``--threads``, default 1: the workers'):
1. single stream, interleaved (each round runs every contestant once on the round's prompt, the order
   rotating, so the machine's load hits all alike): prefill tokens/s (prompt tokens / prefill seconds) and
   decode tokens/s (tokens after the first / their seconds, EOS ignored) for our fast forward in each dtype
   (``--dtypes``: fp32, bf16, int8 dynamic, int8-weight, int4-weight; ``build_s`` is each one's load-time build),
   transformers' forward (the reference loop) and llama.cpp on the GGUF SmolLM2 ships as (Q4_1); medians over
   rounds, and the per-round ratio ours / llama.cpp's median;
2. greedy agreement against fp32 (transformers' forward, the reference): ``--agreement-questions`` prompts
   (a gold passage + its question), ``--agreement-tokens`` greedy tokens each; agreement = the share of the
   reference's tokens reproduced before the first difference (``workers.runtime.fast_lm.token_agreement``),
   exact = the share of identical sequences;
3. batching: ``--levels`` concurrent requests (threads, each a question, ``--concurrent-tokens`` greedy tokens,
   EOS ignored) through one ``BatchEngine`` on the chosen dtype; generated tokens/s over the wall time of all,
   p50/p95 of the per-request latency (submit to last token), and whether the requests' metered
   nanoseconds sum exactly to the engine's measured total;
4. step scaling (``steps``): the cost of one batched decode step of the fast forward, alone (no engine, no
   close-call recompute), at each of ``--levels`` rows for each of ``--dtypes``: median milliseconds of
   ``--step-repeats`` steps and tokens/s (rows / step time). What bounds part 3 (a batch's tokens cost what
   the step costs at that many rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_jsonl, write_json


class LlamaCpp:
    """The llama.cpp worker process (benchmarks/llamacpp_worker.py in the benchmark venv), model loaded once."""

    def __init__(self, python: Path, gguf: Path, threads: int, n_ctx: int = 2048) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(ROOT / "benchmarks" / "llamacpp_worker.py"), str(gguf), str(threads), str(n_ctx)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ready = json.loads(self._line())
        assert ready.get("ready"), ready

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker exited (see its stderr above)")
        return line

    def run(self, prompt: list[int], n: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompt": prompt, "n": n}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _timed_ours(steps_fn, prompt: list[int], n: int) -> dict[str, Any]:
    from workers.runtime.fast_lm import greedy_tokens

    # Wall seconds and this thread's CPU seconds (torch with one thread computes on it): on a loaded shared
    # machine the CPU seconds say what the work costs, the wall seconds what the scheduler gave it.
    t0, c0 = time.perf_counter(), time.thread_time()
    first, step = steps_fn(prompt)
    t1, c1 = time.perf_counter(), time.thread_time()
    tokens = greedy_tokens(first, step, n)
    t2, c2 = time.perf_counter(), time.thread_time()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "prefill_cpu_s": c1 - c0, "decode_cpu_s": c2 - c1,
            "tokens": tokens}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _concurrent(engine: Any, prompts: list[list[int]], level: int, n: int) -> dict[str, Any]:
    import torch

    latencies: list[float] = [0.0] * level
    requests: list[Any] = [None] * level
    total_before = engine.total_ns
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            t0 = time.perf_counter()
            request = engine.open(prompts[i % len(prompts)], max_new_tokens=n)
            try:
                logits, made = request.first_logits, 1
                while made < n:
                    logits = request.step(int(torch.argmax(logits)))
                    made += 1
            finally:
                request.close()
            latencies[i] = time.perf_counter() - t0
            requests[i] = request
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(level)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    metered = sum(r.device_ns for r in requests)
    return {
        "tokens_per_s": level * n / wall, "p50_s": _pct(latencies, 0.5), "p95_s": _pct(latencies, 0.95),
        "wall_s": wall, "requests": level, "tokens_each": n,
        "metered_ns": metered, "engine_ns": engine.total_ns - total_before,
        "cost_sum_exact": metered == engine.total_ns - total_before,
        # What the ledger bills: generated tokens per metered device-second (the engine thread's CPU time on a
        # one-thread CPU), far less sensitive to the shared machine's load than tokens per wall second.
        "tokens_per_device_s": level * n / ((engine.total_ns - total_before) / 1e9),
        "mean_batch": statistics.mean(b for r in requests for b in r.batch_sizes) if n > 1 else 1.0,
    }


def _single(args: Any, lm: Any, contestants: dict[str, Any], llama: LlamaCpp | None, llama_note: str | None,
            rag: list[list[int]], dtypes: list[str]) -> dict[str, Any]:
    """Part 1: single-stream prefill and decode tokens/s, every contestant once per round, interleaved."""
    import torch

    runs: dict[str, list[dict[str, Any]]] = {}
    names = [*contestants, *(["llama_cpp"] if llama else [])]

    def timed(name: str, prompt: list[int], n: int) -> dict[str, Any]:
        if name == "llama_cpp" and llama is not None:
            return llama.run(prompt, n)
        return _timed_ours(contestants[name], prompt, n)

    with torch.inference_mode():
        for name in names:  # warm-up (first-call allocations)
            timed(name, rag[0][:32], 2)
        for r in range(args.rounds):
            prompt = rag[r % len(rag)]
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                out = timed(name, prompt, args.decode_tokens)
                out["prefill_tps"] = len(prompt) / out["prefill_s"]
                out["decode_tps"] = (args.decode_tokens - 1) / out["decode_s"]
                out["prefill_cpu_tps"] = len(prompt) / out["prefill_cpu_s"]
                out["decode_cpu_tps"] = (args.decode_tokens - 1) / out["decode_cpu_s"]
                runs.setdefault(name, []).append(out)
                print(f"round {r} {name}: prefill {out['prefill_tps']:.0f} tok/s, decode {out['decode_tps']:.1f} "
                      f"tok/s", flush=True)
    per: dict[str, Any] = {}
    for name, rs in runs.items():
        per[name] = {key: statistics.median(x[key] for x in rs)
                     for key in ("prefill_tps", "decode_tps", "prefill_cpu_tps", "decode_cpu_tps")}
        per[name]["rounds"] = len(rs)
    single: dict[str, Any] = {
        "ours": {**per[f"ours-{args.dtype}"], "dtype": args.dtype},
        "ours_by_dtype": {dt: per[f"ours-{dt}"] for dt in dtypes},
        "reference_transformers_fp32": per["reference"],
        "prompt_tokens": [len(rag[r % len(rag)]) for r in range(args.rounds)],
        "decode_tokens": args.decode_tokens,
    }
    if llama:
        single["llama_cpp"] = {**per["llama_cpp"], "dtype": "Q4_1 (GGUF)"}
        single["decode_ratio_vs_llama_cpp"] = {
            dt: statistics.median(o["decode_tps"] / ll["decode_tps"]
                                  for o, ll in zip(runs[f"ours-{dt}"], runs["llama_cpp"], strict=True))
            for dt in dtypes}
        single["prefill_ratio_vs_llama_cpp"] = {
            dt: statistics.median(o["prefill_tps"] / ll["prefill_tps"]
                                  for o, ll in zip(runs[f"ours-{dt}"], runs["llama_cpp"], strict=True))
            for dt in dtypes}
        single["decode_cpu_ratio_vs_llama_cpp"] = {
            dt: statistics.median(o["decode_cpu_tps"] / ll["decode_cpu_tps"]
                                  for o, ll in zip(runs[f"ours-{dt}"], runs["llama_cpp"], strict=True))
            for dt in dtypes}
    else:
        single["llama_cpp"] = {"skipped": llama_note}
    single["decode_cpu_ratio_vs_reference"] = {
        dt: statistics.median(o["decode_cpu_tps"] / ref["decode_cpu_tps"]
                              for o, ref in zip(runs[f"ours-{dt}"], runs["reference"], strict=True))
        for dt in dtypes}
    single["decode_ratio_vs_reference"] = {
        dt: statistics.median(o["decode_tps"] / ref["decode_tps"]
                              for o, ref in zip(runs[f"ours-{dt}"], runs["reference"], strict=True))
        for dt in dtypes}

    return single


def _agreement(args: Any, lm: Any, fasts: dict[str, Any], llama: LlamaCpp | None, rag: list[list[int]],
               dtypes: list[str]) -> dict[str, Any]:
    """Part 2: greedy tokens of each dtype (and llama.cpp) against transformers' fp32 forward."""
    import torch

    from workers.runtime.decode import causal_lm_steps
    from workers.runtime.fast_lm import greedy_tokens, token_agreement

    prompts = rag[args.agreement_offset : args.agreement_offset + args.agreement_questions]
    n = args.agreement_tokens
    with torch.inference_mode():
        reference = []
        for p in prompts:
            first, step = causal_lm_steps(lm, p)
            reference.append(greedy_tokens(first, step, n))
        agreement: dict[str, Any] = {"questions": len(prompts), "tokens_each": n,
                                     "reference": "transformers forward, fp32"}
        for dt in dtypes:
            other = []
            for p in prompts:
                first, step = fasts[dt].steps(p)
                other.append(greedy_tokens(first, step, n))
            agreement[f"ours-{dt}"] = {
                "agreement": token_agreement(reference, other),
                "exact": sum(a == b for a, b in zip(reference, other, strict=True)) / len(prompts)}
            print(f"agreement ours-{dt}: {agreement[f'ours-{dt}']}", flush=True)
        if llama:
            other = [llama.run(p, n)["tokens"] for p in prompts]
            agreement["llama_cpp"] = {
                "agreement": token_agreement(reference, other),
                "exact": sum(a == b for a, b in zip(reference, other, strict=True)) / len(prompts)}
            print(f"agreement llama_cpp: {agreement['llama_cpp']}", flush=True)
    agreement["value"] = agreement[f"ours-{args.dtype}"]["agreement"]
    return agreement


def _concurrency(args: Any, lm: Any, fasts: dict[str, Any], short: list[list[int]]) -> dict[str, Any]:
    """Part 3: throughput and latency of concurrent requests through one batching engine."""
    from workers.runtime.batching import BatchEngine, BatchSettings

    levels = [int(x) for x in args.levels.split(",") if x]
    engine = BatchEngine(lm, fasts[args.dtype], BatchSettings(max_rows=max(levels), max_kv_bytes=2**34))
    concurrent: dict[str, Any] = {}
    try:
        _concurrent(engine, short, 1, 2)  # warm-up
        for level in levels:
            concurrent[str(level)] = _concurrent(engine, short, level, args.concurrent_tokens)
            print(f"concurrent {level}: {concurrent[str(level)]}", flush=True)
    finally:
        engine.close()
    one = concurrent.get("1", {}).get("tokens_per_s")
    if one:
        for level in levels:
            concurrent[str(level)]["speedup_vs_1"] = concurrent[str(level)]["tokens_per_s"] / one

    return concurrent


def _step_scaling(args: Any, fasts: dict[str, Any], short: list[list[int]], dtypes: list[str]) -> dict[str, Any]:
    """Part 4: one decode step's wall time at each row count, per dtype (close calls not recomputed)."""
    import torch

    levels = [int(x) for x in args.levels.split(",") if x]
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for dt in dtypes:
            fast = fasts[dt]
            margin, fast.close_call = fast.close_call, 0.0
            try:
                out[dt] = {}
                for rows in levels:
                    cache = fast.new_cache(rows, 256)
                    firsts = [fast.prefill(cache, r, short[r % len(short)]) for r in range(rows)]
                    tokens = [int(torch.argmax(logits)) for logits in firsts]
                    fast.decode_step(cache, tokens)  # warm-up
                    times = []
                    for _ in range(args.step_repeats):
                        t0 = time.perf_counter()
                        logits = fast.decode_step(cache, tokens)
                        times.append(time.perf_counter() - t0)
                        tokens = [int(t) for t in logits.argmax(-1)]
                    ms = statistics.median(times) * 1000
                    out[dt][str(rows)] = {"step_ms": round(ms, 2), "tokens_per_s": round(rows / ms * 1000, 1)}
                print(f"steps {dt}: {out[dt]}", flush=True)
            finally:
                fast.close_call = margin
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path,
                        default=Path(os.environ.get("PARSIMONY_SHARED_DATA", ROOT.parent / "shared" / "data"))
                        / "nq-open-oracle")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--dtypes", default="fp32,int8-weight,int4-weight",
                        help="comma-separated fast-forward dtypes (fp32, bf16, int8, int8-weight, int4-weight)")
    parser.add_argument("--dtype", default="fp32", help="the dtype the batching rows use")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PARSIMONY_TORCH_THREADS", "1")))
    parser.add_argument("--rounds", type=int, default=3, help="single-stream rounds (interleaved)")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--agreement-questions", type=int, default=30)
    parser.add_argument("--agreement-tokens", type=int, default=16)
    parser.add_argument("--agreement-offset", type=int, default=0,
                        help="first question of the agreement set (0: the reported split; tune on another)")
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--concurrent-tokens", type=int, default=32)
    parser.add_argument("--step-repeats", type=int, default=15, help="decode steps timed per row count (part 4)")
    parser.add_argument("--llama-python", type=Path, default=ROOT / "var" / "bench-llamacpp" / "bin" / "python")
    parser.add_argument("--model-cache", type=Path, default=ROOT / "var" / "test-models")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: single, agreement, concurrent, steps")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}


    from workers.runtime.decode import causal_lm_steps
    from workers.runtime.fast_lm import fast_lm
    from workers.runtime.local_lm import SMOLLM2_ALIAS, load_causal_lm, set_torch_threads, smollm2_gguf_path
    from workers.runtime.token_count import chat_template_ids

    set_torch_threads(args.threads)
    lm = load_causal_lm(SMOLLM2_ALIAS, cache_dir=args.model_cache, device="cpu")
    questions = read_jsonl(args.dataset / "questions.jsonl")
    passages = {p["pid"]: p for p in read_jsonl(args.dataset / "passages.jsonl")}

    def rag_prompt(q: dict) -> list[int]:
        p = passages[q["gold_pids"][0]]
        text = f"{p['title']}: {p['text']}\n\nQuestion: {q['question']}\nAnswer briefly."
        return chat_template_ids(lm.tokenizer, [{"role": "user", "content": text}])

    rag = [rag_prompt(q) for q in questions[: max(args.agreement_offset + args.agreement_questions, args.rounds)]]
    short = [chat_template_ids(lm.tokenizer, [{"role": "user", "content": q["question"]}]) for q in questions[:16]]
    dtypes = [d for d in args.dtypes.split(",") if d]
    started = time.perf_counter()
    build_s = {}
    build_cpu_s = {}
    fasts = {}
    for dt in dtypes:
        t0, c0 = time.perf_counter(), time.thread_time()
        fasts[dt] = fast_lm(lm, dt)
        build_s[dt], build_cpu_s[dt] = time.perf_counter() - t0, time.thread_time() - c0
    llama = None
    llama_note = None
    importable = args.llama_python.exists() and subprocess.run(
        [str(args.llama_python), "-c", "import llama_cpp, numpy"], capture_output=True, check=False).returncode == 0
    if importable:
        llama = LlamaCpp(args.llama_python, smollm2_gguf_path(), args.threads)
    else:
        llama_note = (f"llama.cpp skipped: {args.llama_python} cannot import llama_cpp "
                      "(install benchmarks/requirements-llamacpp.txt in its venv)")
        print(llama_note, flush=True)

    contestants: dict[str, Any] = {f"ours-{dt}": (lambda f: (lambda p: f.steps(p)))(fasts[dt]) for dt in dtypes}
    contestants["reference"] = lambda p: causal_lm_steps(lm, p)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "loadavg_start": load_before},
        "model": f"{SMOLLM2_ALIAS} (ours: the GGUF dequantized to safetensors; llama.cpp: the Q4_1 GGUF itself)",
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
    }

    if "single" not in skip:
        result["single"] = _single(args, lm, contestants, llama, llama_note, rag, dtypes)
        write_json(args.json, result)
    if "concurrent" not in skip:
        result["concurrent"] = _concurrency(args, lm, fasts, short)
        write_json(args.json, result)
    if "steps" not in skip:
        result["steps"] = _step_scaling(args, fasts, short, dtypes)
        write_json(args.json, result)
    if "agreement" not in skip:
        result["greedy_agreement"] = _agreement(args, lm, fasts, llama, rag, dtypes)
    if llama:
        llama.close()

    # Weight-only dtypes recompute a decode step in fp32 when its two best logits are a near-tie.
    result["close_calls"] = {dt: {"steps": fasts[dt].steps_run, "fp32_steps": fasts[dt].fp32_steps,
                                  "fp32_rows": fasts[dt].fp32_rows} for dt in dtypes}
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["elapsed_s"] = time.perf_counter() - started
    write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
