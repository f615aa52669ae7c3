"""Tool-library search quality and the prompt tokens it saves, plus the agent end to end on tulip math.

    .venv/bin/python -m benchmarks.tool_search --json out/tool_search.json [--limit N]
        [--decompose-limit N] [--agent-limit N] [--skip-agent] [--skip-decompose]

Django-free: the same engine pieces the service runs (``indexes.tool_index`` over MiniLM
"name: description" vectors, ``workers.agent`` decomposition, loop and tool packs, the local
SmolLM2 through ``workers.runtime.meter``).

Rows (dataset x query mode):
- metatool-single: MetaTool single-tool queries (any acceptable gold tool counts) against the
  199-tool library; ``raw`` indexes descriptions only; ``raw+examples`` blends 20 example requests
  per tool into its vector (Tool2Vec-style), drawn from a disjoint half of the shared queries
  (split by sha256 of the query id). Both modes are scored on the same other half.
- metatool-multi: the 2-tool queries; recall = the share of gold tools found.
- tulip-math-100 / tulip-math-685: the tulip math tasks against the 100-tool library and the 685-tool
  library (the same kind of functions and many more); recall = share of the task's distinct gold tools.
- query modes ``raw`` (the request as one query) and ``decomposed`` (SmolLM2 splits the request
  into subtasks, each searched; a tool's rank is its best rank over the subtasks, and the offered
  set is the union of each subtask's top-k).

Tokens: the tool definitions as the JSON tool-call prompt lists them (one compact JSON line per
tool), counted with the SmolLM2 tokenizer. ``tool_tokens_offered`` is the mean over queries of the
definitions offered at top_k=5 (per subtask, union); ``all_tools_tokens`` is the whole library.
Latency: query embedding + index search, one query at a time, p50/p95 over up to 200 queries
(``search_ms``), and the index search alone with the query vector given (``index_ms``).

Agent: the tulip tasks through ``workers.agent.loop`` with SmolLM2 (JSON tool calls) over the
104 built-in tools; success = a number in the final answer within 1% (or 0.01) of a valid
solution, or the exact text of a non-numeric one. Cost at the default local CPU price.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from benchmarks.common import ROOT as REPO_ROOT
from benchmarks.common import read_jsonl, write_json

# The shared data sets beside the repository; PARSIMONY_SHARED_DATA names them elsewhere (a worktree).
DATA = Path(os.environ.get("PARSIMONY_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
METATOOL = DATA / "metatool-tool-selection"
TULIP = DATA / "tulip-math-tools"
TOP_K = 5
EXAMPLES_PER_TOOL = 20
JSON_TYPES = {"float": "number", "int": "integer", "bool": "boolean", "str": "string",
              "list[float]": "array", "list[int]": "array", "list": "array", "dict": "object"}


# --------------------------------------------------------------------------- data


def _half(key: str) -> int:
    return int(hashlib.sha256(f"tool-search:{key}".encode()).hexdigest(), 16) % 2


def _tulip_schema(entry: dict) -> tuple[str, dict]:
    """(summary, JSON schema) of a tulip library entry, from its parameter list and docstring."""
    doc = entry["description"]
    summary = " ".join(doc.split(":param")[0].split(":return")[0].split())
    descriptions = dict(re.findall(r":param (\w+): ([^\n]+)", doc))
    properties = {}
    for parameter in entry["parameters"]:
        kind = parameter.get("type") or "str"  # a few tamte parameters carry no annotation
        prop = {"type": JSON_TYPES.get(kind, "string")}
        if kind.startswith("list["):
            prop["items"] = {"type": JSON_TYPES.get(kind[5:-1], "number")}
        if parameter["name"] in descriptions:
            prop["description"] = descriptions[parameter["name"]].strip()
        properties[parameter["name"]] = prop
    return summary, {"type": "object", "properties": properties, "required": list(properties)}


def load_libraries() -> dict[str, list[dict]]:
    """name -> [{name, description, parameters, examples}]"""
    libraries = {}
    metatool = json.loads((METATOOL / "tools.json").read_text())
    libraries["metatool"] = [
        {"name": t["name"], "description": t["description"], "parameters": {"type": "object", "properties": {}}}
        for t in metatool
    ]
    for size, filename in (("100", "tools_math_tools_100.json"), ("685", "tools_tamte_685.json")):
        entries = []
        for entry in json.loads((TULIP / filename).read_text()):
            summary, schema = _tulip_schema(entry)
            entries.append({"name": entry["name"], "description": summary, "parameters": schema})
        libraries[f"tulip-math-{size}"] = entries
    return libraries


def load_queries(limit: int | None) -> dict[str, list[dict]]:
    single = read_jsonl(METATOOL / "queries_single_tool.jsonl")
    evaluation = sorted(
        (q for q in single if _half(q["qid"]) == 1), key=lambda q: hashlib.sha256(q["qid"].encode()).hexdigest()
    )
    multi = read_jsonl(METATOOL / "queries_multi_tool.jsonl")
    tasks = json.loads((TULIP / "tasks.json").read_text())
    return {
        "metatool-single": evaluation[:limit] if limit else evaluation,
        "metatool-multi": multi[:limit] if limit else multi,
        "tulip": [{"qid": t["name"], "query": t["task"], "gold_tools": list(dict.fromkeys(t["functions"])),
                   "valid_solutions": t["valid_solutions"]} for t in tasks],
    }


def metatool_examples() -> dict[str, list[str]]:
    """Up to EXAMPLES_PER_TOOL example requests per tool, from the half not used for evaluation."""
    pool: dict[str, list[str]] = {}
    rows = sorted(
        read_jsonl(METATOOL / "queries_single_tool.jsonl"), key=lambda q: hashlib.sha256(q["qid"].encode()).hexdigest()
    )
    for query in rows:
        if _half(query["qid"]) != 0 or len(query["gold_tools"]) != 1:
            continue
        bucket = pool.setdefault(query["gold_tools"][0], [])
        if len(bucket) < EXAMPLES_PER_TOOL:
            bucket.append(query["query"])
    return pool


# --------------------------------------------------------------------------- scoring


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def score(rankings: list[list[list[str]]], golds: list[list[str]], *, any_of: bool) -> dict[str, float]:
    """rankings[q] = one ranked name list per subtask. Recall@k of the union of per-subtask top-k."""
    out = {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr": 0.0}
    for lists, gold in zip(rankings, golds, strict=True):
        best_rank = {}
        for ranked in lists:
            for rank, name in enumerate(ranked):
                best_rank[name] = min(rank, best_rank.get(name, rank))
        for k in (1, 5, 10):
            found = [g for g in gold if best_rank.get(g, 10**9) < k]
            out[f"recall@{k}"] += (1.0 if found else 0.0) if any_of else len(found) / len(gold)
        first = min((best_rank.get(g, 10**9) for g in gold), default=10**9)
        out["mrr"] += 1 / (first + 1) if first < 10**9 else 0.0
    n = max(1, len(golds))
    return {key: round(value / n, 4) for key, value in out.items()}


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, *, model_cache: Path, decompositions: Path | None = None) -> None:
        from workers.runtime.embedders import get_embedder
        from workers.runtime.local_lm import load_causal_lm, set_torch_threads

        set_torch_threads(1)
        self.embedder = get_embedder("all-MiniLM-L6-v2", threads=1)
        self.lm = load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache, device="cpu")
        self.tokenizer = self.lm.tokenizer
        self._cache_path = decompositions
        self._decompositions: dict[str, list[str]] = (
            json.loads(decompositions.read_text()) if decompositions and decompositions.exists() else {}
        )
        self.decompose_seconds: list[float] = []

    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def definition_tokens(self, library: list[dict]) -> dict[str, int]:
        from workers.agent.schema import compact_definition

        return {t["name"]: self.tokens(compact_definition(name=t["name"], description=t["description"],
                                                          parameters=t["parameters"])) for t in library}

    def store(self, library: list[dict], examples: dict[str, list[str]] | None = None):
        from indexes.tool_index import ToolDocument, ToolIndexStore

        store = ToolIndexStore(tempfile.mkdtemp(prefix="tool-bench-"), embed=self.embedder.encode,
                               dimension=self.embedder.dimension)
        documents = [ToolDocument(i, t["name"], t["description"], tuple((examples or {}).get(t["name"], ())))
                     for i, t in enumerate(library)]
        store.rebuild("global", documents)
        return store

    def decompose(self, query: str) -> list[str]:
        from workers.agent.decompose import decompose_messages, subtasks_or_whole
        from workers.runtime.meter import generate

        if query not in self._decompositions:
            started = time.perf_counter()
            result = generate(target=self.lm, messages=decompose_messages(query, max_steps=5), max_output_tokens=128,
                              wall_time_limit_s=60)
            self.decompose_seconds.append(time.perf_counter() - started)
            self._decompositions[query] = subtasks_or_whole(result.text, task=query, max_steps=5)[0]
            if self._cache_path is not None:
                self._cache_path.write_text(json.dumps(self._decompositions, indent=1))
        return self._decompositions[query]

    def rank(self, store, library: list[dict], texts: list[str], k: int = 10) -> list[list[str]]:
        vectors = self.embedder.encode(texts)
        return [[library[i]["name"] for i, _ in store.search_vector(v, scopes=["global"], k=k)] for v in vectors]

    def latency(self, store, texts: list[str]) -> dict[str, float]:
        """End to end (embed the query + search), and the index search alone (vector given)."""
        times, index_times = [], []
        for text in texts[:200]:
            started = time.perf_counter()
            store.search(text, scopes=["global"], k=TOP_K)
            times.append(1000 * (time.perf_counter() - started))
        for vector in self.embedder.encode(texts[:200]):
            started = time.perf_counter()
            store.search_vector(vector, scopes=["global"], k=TOP_K)
            index_times.append(1000 * (time.perf_counter() - started))
        return {
            "search_ms_p50": round(_percentile(times, 0.5), 2), "search_ms_p95": round(_percentile(times, 0.95), 2),
            "index_ms_p50": round(_percentile(index_times, 0.5), 3),
            "index_ms_p95": round(_percentile(index_times, 0.95), 3),
        }

    def row(self, *, dataset: str, mode: str, library: list[dict], queries: list[dict], store, any_of: bool,
            decompose: bool) -> dict:
        started = time.perf_counter()
        texts = [q["query"] for q in queries]
        if decompose:
            subtask_lists = [self.decompose(text) for text in texts]
            flat = [s for subtasks in subtask_lists for s in subtasks]
            flat_ranked = iter(self.rank(store, library, flat))
            rankings = [[next(flat_ranked) for _ in subtasks] for subtasks in subtask_lists]
        else:
            rankings = [[ranked] for ranked in self.rank(store, library, texts)]
        scores = score(rankings, [q["gold_tools"] for q in queries], any_of=any_of)
        definition = self.definition_tokens(library)
        offered = [
            sum(definition[name] for name in {n for ranked in lists for n in ranked[:TOP_K]}) for lists in rankings
        ]
        all_tokens = sum(definition.values())
        mean_offered = statistics.fmean(offered)
        row = {
            "dataset": dataset, "query_mode": mode, "n": len(queries), "library_size": len(library), **scores,
            "tool_tokens_offered": round(mean_offered, 1), "all_tools_tokens": all_tokens,
            "token_saving": round(1 - mean_offered / all_tokens, 4),
            **self.latency(store, texts),
            "subtasks_per_query": round(statistics.fmean(len(r) for r in rankings), 2),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(row), flush=True)
        return row

    # ----------------------------------------------------------------------- agent end to end

    def agent(self, tasks: list[dict], *, constrained: bool = True) -> dict:
        from apps.costs.defaults import CPU_PER_SECOND
        from apps.costs.pricing import Usage, cost_of, to_decimal
        from indexes.tool_index import ToolDocument, ToolIndexStore
        from workers.agent.loop import AgentConfig, ModelReply, ToolHit, ToolSpec, run_agent
        from workers.agent.tools import builtin_tools
        from workers.runtime.meter import generate

        class CpuPrice:
            input_per_mtok = output_per_mtok = per_gpu_second = Decimal(0)
            cached_input_per_mtok = None
            per_cpu_second = CPU_PER_SECOND

        tools = builtin_tools()
        store = ToolIndexStore(tempfile.mkdtemp(prefix="tool-bench-agent-"), embed=self.embedder.encode,
                               dimension=self.embedder.dimension)
        store.rebuild("global", [ToolDocument(i, t.name, t.description) for i, t in enumerate(tools)])
        specs = [ToolSpec(t.name, t.description, t.parameters, i) for i, t in enumerate(tools)]
        config = AgentConfig(mode="json", top_k=TOP_K, threshold=0.35, max_depth=1, step_limit=8, tool_timeout_s=10,
                             constrained=constrained)
        results = []
        for task in tasks:
            usage = {"prompt": 0, "completion": 0, "cost": Decimal(0), "tool_seconds": 0.0}

            def model(messages, *, tools=None, on_token=None, purpose="step", max_tokens=None, grammar=None,
                      usage=usage):
                result = generate(target=self.lm, messages=messages, max_output_tokens=min(max_tokens or 128, 128),
                                  wall_time_limit_s=120, on_token=on_token, grammar=grammar)
                usage["prompt"] += result.prompt_tokens
                usage["completion"] += result.completion_tokens
                usage["cost"] += cost_of(
                    usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                cpu_seconds=to_decimal(round(result.compute_s, 6))),
                    price=CpuPrice,
                )
                return ModelReply(text=result.text, finish_reason=result.finish_reason)

            def search(query, k):
                return [ToolHit(specs[i], score) for i, score in store.search(query, scopes=["global"], k=k)]

            def execute(spec, arguments):
                return tools[spec.key].function(**arguments)

            def on_tool_done(spec, arguments, outcome, usage=usage):
                usage["tool_seconds"] += outcome.duration_ms / 1000
                usage["cost"] += cost_of(
                    usage=Usage(cpu_seconds=to_decimal(outcome.duration_ms / 1000)), price=CpuPrice
                )

            started = time.perf_counter()
            try:
                outcome = run_agent(request=task["query"], config=config, model=model, search=search, execute=execute,
                                    on_tool_done=on_tool_done)
                answer, calls, called, offered, finish = (outcome.answer, outcome.model_calls, outcome.tools_called,
                                                          outcome.tools_offered, outcome.finish_reason)
                label, steps = outcome.tool_outcome, outcome.steps
            except Exception as exc:  # a crash is a failure, recorded
                answer, calls, called, offered, finish, label, steps = f"error: {exc}", 0, [], [], "error", "", []
            ok = solved(answer, task["valid_solutions"])
            step_calls = [c for s in steps if s.get("type") == "subtask" for c in s.get("calls", [])]
            tool_calls = [tc for c in step_calls for tc in c.get("tool_calls", [])]
            results.append({
                "task": task["qid"], "success": ok, "answer": answer[:300],
                "valid_solutions": task["valid_solutions"], "gold_tools": task["gold_tools"],
                "tools_offered": offered, "tools_called": called, "model_calls": calls,
                "finish_reason": finish, "tool_outcome": label,
                "steps": len(step_calls), "valid_steps": sum(bool(c.get("valid")) for c in step_calls),
                "tool_call_steps": sum(bool(c.get("tool_calls")) for c in step_calls),
                "tool_errors": sum(bool(tc.get("error")) for tc in tool_calls),
                "step_outputs": [c.get("model_output", "")[:200] for c in step_calls],
                "prompt_tokens": usage["prompt"], "completion_tokens": usage["completion"],
                "cost": str(usage["cost"]), "seconds": round(time.perf_counter() - started, 1),
            })
            # The whole record, one line per task: a run cut short can still be summed from its log.
            print(json.dumps({"agent_task": results[-1], "decoding": "constrained" if constrained else "unconstrained"},
                             default=str), flush=True)
        return agent_summary(results, constrained=constrained)


def agent_summary(results: list[dict], *, constrained: bool) -> dict:
    """The agent row from its per-task records (a run's, or those summed from the logs of runs over parts)."""
    from apps.costs.defaults import CPU_PER_SECOND

    n = len(results)
    gold_offered = [len(set(r["gold_tools"]) & set(r["tools_offered"])) / len(r["gold_tools"]) for r in results]
    n_solved = sum(r["success"] for r in results)
    total_cost = sum((Decimal(r["cost"]) for r in results), Decimal(0))
    steps = sum(r["steps"] for r in results)
    labels = [r["tool_outcome"] for r in results]
    return {
        "decoding": "constrained (llguidance grammar of the offered tools)" if constrained else "unconstrained",
        "tasks": n,
        "solved": n_solved,
        # Steps: the model calls that solve a subtask (decompositions and the final composition are free
        # text). Valid: a schema-valid call to an offered tool, or a schema-valid answer.
        "valid_tool_call_rate": round(sum(r["valid_steps"] for r in results) / steps, 4) if steps else 0.0,
        "steps": steps,
        "tool_call_step_rate": round(sum(r["tool_call_steps"] for r in results) / steps, 4) if steps else 0.0,
        "cost_per_solved_task": (
            str((total_cost / n_solved).quantize(Decimal("0.0000000001"))) if n_solved else None
        ),
        "tool_outcomes": {label: labels.count(label) for label in sorted(set(labels))},
        "tool_errors": sum(r["tool_errors"] for r in results),
        "success": round(n_solved / n, 4) if n else 0.0,
        "successes": n_solved,
        "cost_per_task": str((total_cost / n).quantize(Decimal("0.0000000001"))) if n else "0",
        "model_calls_per_task": round(statistics.fmean(r["model_calls"] for r in results), 2) if n else 0,
        "tool_calls_per_task": round(statistics.fmean(len(r["tools_called"]) for r in results), 2) if n else 0,
        "gold_tools_offered": round(statistics.fmean(gold_offered), 4) if n else 0,
        "prompt_tokens_per_task": round(statistics.fmean(r["prompt_tokens"] for r in results), 1) if n else 0,
        "seconds_per_task": round(statistics.fmean(r["seconds"] for r in results), 1) if n else 0,
        "price": f"local CPU ${CPU_PER_SECOND}/s (apps.costs.defaults)",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32), 1 torch thread",
        "results": results,
    }


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def solved(answer: str, valid: list) -> bool:
    numbers = []
    for match in _NUMBER.findall(answer or ""):
        try:
            numbers.append(float(match.replace(",", "")))
        except ValueError:
            continue
    for solution in valid:
        if isinstance(solution, (int, float)):
            if any(abs(n - solution) <= max(0.01 * abs(solution), 0.01) for n in numbers):
                return True
        elif str(solution).strip().lower() in (answer or "").lower():
            return True
    return False


def summarize_logs(logs: list[Path], out: Path) -> int:
    """Agent rows from the per-task lines of several logs (each task once, in the shared task order)."""
    order = [task["name"] for task in json.loads((TULIP / "tasks.json").read_text())]
    by_mode: dict[str, dict[str, dict]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith('{"agent_task"'):
                record = json.loads(line)
                by_mode.setdefault(record["decoding"], {})[record["agent_task"]["task"]] = record["agent_task"]
    rows = [
        agent_summary(sorted(tasks.values(), key=lambda r: order.index(r["task"])), constrained=mode == "constrained")
        for mode, tasks in sorted(by_mode.items())
    ]
    result = {"agent": rows[0] if rows else {}, "agent_rows": rows, "logs": [str(p) for p in logs]}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "results"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path, help="Where to write the results")
    parser.add_argument("--limit", type=int, default=2000, help="MetaTool queries per dataset (0: all)")
    parser.add_argument("--decompose-limit", type=int, default=60, help="MetaTool multi-tool queries decomposed")
    parser.add_argument("--agent-limit", type=int, default=36, help="Tulip tasks run end to end")
    parser.add_argument("--skip-agent", action="store_true")
    parser.add_argument("--agent-only", action="store_true", help="Only the agent rows (no retrieval rows)")
    parser.add_argument("--agent-start", type=int, default=0, help="The first tulip task run (to split a run)")
    parser.add_argument("--agent-tasks", default="", help="Comma-separated tulip task names: only these")
    parser.add_argument("--from-logs", type=Path, nargs="+", default=None,
                        help="Sum the agent rows from the logs of runs over parts of the tasks (no model run)")
    parser.add_argument("--agent-decoding", default="constrained",
                        help="Comma-separated agent rows: constrained, unconstrained")
    parser.add_argument("--skip-decompose", action="store_true")
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / "var" / "test-models",
                        help="Where the converted SmolLM2 is cached")
    parser.add_argument("--decompositions", type=Path, default=None,
                        help="A JSON file caching SmolLM2's decompositions (greedy, so reruns reuse them)")
    args = parser.parse_args(argv)
    if args.from_logs:
        return summarize_logs(args.from_logs, args.json)

    started = time.perf_counter()
    bench = Bench(model_cache=args.model_cache, decompositions=args.decompositions)
    libraries = load_libraries()
    queries = load_queries(args.limit or None)
    rows = []

    if not args.agent_only:
        metatool = libraries["metatool"]
        plain = bench.store(metatool)
        with_examples = bench.store(metatool, metatool_examples())
        for mode, store in (("raw", plain), ("raw+examples", with_examples)):
            rows.append(bench.row(dataset="metatool-single", mode=mode, library=metatool,
                                  queries=queries["metatool-single"], store=store, any_of=True, decompose=False))
            rows.append(bench.row(dataset="metatool-multi", mode=mode, library=metatool,
                                  queries=queries["metatool-multi"], store=store, any_of=False, decompose=False))
        if not args.skip_decompose:
            subset = queries["metatool-multi"][: args.decompose_limit]
            if len(subset) < len(queries["metatool-multi"]):  # the raw request on the same queries, to compare
                rows.append(bench.row(dataset="metatool-multi", mode=f"raw (first {len(subset)})", library=metatool,
                                      queries=subset, store=plain, any_of=False, decompose=False))
            rows.append(bench.row(dataset="metatool-multi", mode="decomposed", library=metatool, queries=subset,
                                  store=plain, any_of=False, decompose=True))
        for name in ("tulip-math-100", "tulip-math-685"):
            store = bench.store(libraries[name])
            for mode in ("raw",) if args.skip_decompose else ("raw", "decomposed"):
                rows.append(bench.row(dataset=name, mode=mode, library=libraries[name], queries=queries["tulip"],
                                      store=store, any_of=False, decompose=mode == "decomposed"))
    modes = [m.strip() for m in args.agent_decoding.split(",") if m.strip()]
    unknown = sorted(set(modes) - {"constrained", "unconstrained"})
    if unknown:
        parser.error(f"unknown --agent-decoding {', '.join(unknown)} (valid: constrained, unconstrained)")
    chosen = {name.strip() for name in args.agent_tasks.split(",") if name.strip()}
    tulip = [task for task in queries["tulip"] if task["qid"] in chosen] if chosen else queries["tulip"]
    agents = [] if args.skip_agent else [
        bench.agent(tulip[args.agent_start : args.agent_start + args.agent_limit],
                    constrained=mode == "constrained")
        for mode in modes
    ]
    agent = agents[0] if agents else {}
    out = {
        "rows": rows,
        "agent": agent,
        "agent_rows": agents,
        "config": {
            "top_k_offered": TOP_K, "embedder": "all-MiniLM-L6-v2 (name: description)",
            "examples_per_tool": EXAMPLES_PER_TOOL,
            "token_counter": "SmolLM2-135M-Instruct tokenizer, compact JSON tool definitions",
            "decompose_seconds_mean": (
                round(statistics.fmean(bench.decompose_seconds), 2) if bench.decompose_seconds else None
            ),
            "limit": args.limit, "decompose_limit": args.decompose_limit, "agent_limit": args.agent_limit,
        },
        "machine": {
            "python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine(),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, out)
    print(f"wrote {args.json} in {out['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
