"""Which grammar library masks tool-call tokens fastest on this CPU: llguidance, xgrammar, outlines-core,
lm-format-enforcer (whichever are installed).

    .venv/bin/python -m benchmarks.grammar_libs --json bench-results/grammar_libs.json \\
        [--extra-path var/benchlibs] [--repeats 3]

The agent's step schema (`workers.runtime.grammar.tool_call_schema`: one branch per offered tool plus
the answer) over five built-in tools, with the SmolLM2-135M tokenizer (49,152 tokens). Per library:
``tokenizer_s`` (its view of the vocabulary, built once per process), ``compile_s`` (the schema, once per
tool set), and the per-token mask time (median and p95 over every position of three reference documents:
two tool calls and an answer, walked token by token as the decode loop does: mask, then consume the
reference token). ``correct``: every reference token was allowed and the documents ended accepted.
A SmolLM2 decode step takes ~100 ms on this CPU: a mask of a millisecond or less is free.

Only llguidance is a project dependency (pyproject.toml). The others are installed outside the shared
environment for this comparison (``pip install --target var/benchlibs --no-deps xgrammar==0.2.8
outlines-core==0.2.14 lm-format-enforcer==0.11.3 interegular==0.3.3 apache-tvm-ffi==0.1.15.post2``) and
found through ``--extra-path``; a library that does not import is reported as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_json

TOOLS = ["area_rectangle", "perimeter_rectangle", "area_square", "add", "multiply"]
DOCUMENTS = [
    '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
    '{"tool": "multiply", "arguments": {"a": 17.5, "b": -23}}',
    '{"answer": "The area of the rectangle is 40 square meters."}',
]


def step_schema() -> dict[str, Any]:
    from workers.agent.tools import REGISTRY
    from workers.runtime.grammar import tool_call_schema

    return tool_call_schema([(name, REGISTRY[name].parameters) for name in TOOLS])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


# Each adapter: setup(tokenizer) -> state (timed as tokenizer_s); compile(state, schema) -> grammar (compile_s);
# start(grammar) -> matcher; allowed(matcher, token) -> bool after computing the full mask (timed); advance;
# accepting(matcher) -> bool.


class LLGuidance:
    name = "llguidance"

    def version(self) -> str:
        from importlib.metadata import version

        return version("llguidance")

    def setup(self, tokenizer: Any) -> Any:
        import llguidance.hf

        return llguidance.hf.from_tokenizer(tokenizer)

    def compile(self, state: Any, schema: dict) -> Any:
        import llguidance

        from workers.runtime.grammar import JSON_OPTIONS

        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        # The matcher's construction is where llguidance builds the grammar: part of the compile time.
        llguidance.LLMatcher(state, grammar, log_level=0)
        return (state, grammar)

    def start(self, compiled: Any) -> Any:
        import llguidance

        return llguidance.LLMatcher(compiled[0], compiled[1], log_level=0)

    def mask(self, matcher: Any) -> Any:
        import numpy as np

        return np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")

    def allows(self, mask: Any, token: int) -> bool:
        return bool(mask[token])

    def advance(self, matcher: Any, token: int) -> None:
        matcher.consume_token(token)

    def accepting(self, matcher: Any) -> bool:
        return bool(matcher.is_accepting())


class XGrammar:
    name = "xgrammar"

    def version(self) -> str:
        from importlib.metadata import version

        return version("xgrammar")

    def setup(self, tokenizer: Any) -> Any:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False), info

    def compile(self, state: Any, schema: dict) -> Any:
        compiler, info = state
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        return compiled, info

    def start(self, compiled: Any) -> Any:
        import xgrammar as xgr

        grammar, info = compiled
        return xgr.GrammarMatcher(grammar), xgr.allocate_token_bitmask(1, info.vocab_size)

    def mask(self, matcher: Any) -> Any:
        import numpy as np

        m, bitmask = matcher
        m.fill_next_token_bitmask(bitmask)
        return np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")

    def allows(self, mask: Any, token: int) -> bool:
        return bool(mask[token])

    def advance(self, matcher: Any, token: int) -> None:
        matcher[0].accept_token(token)

    def accepting(self, matcher: Any) -> bool:
        m = matcher[0]
        return bool(m.is_terminated() or m.accept_token(m_eos(m)))


def m_eos(matcher: Any) -> int:
    return int(matcher.stop_token_ids[0])


class OutlinesCore:
    name = "outlines-core"

    def version(self) -> str:
        from importlib.metadata import version

        return version("outlines-core")

    def setup(self, tokenizer: Any) -> Any:
        from outlines_core import Vocabulary

        # outlines' own adapter: each token as the text it stands for (byte-level BPE: "Ġ" is a space).
        mapping: dict[str, list[int]] = {}
        eos = int(tokenizer.eos_token_id)
        for token, index in tokenizer.get_vocab().items():
            if index == eos:
                continue
            text = tokenizer.convert_tokens_to_string([token])
            if token.startswith("Ġ") or token == "Ċ":  # convert_tokens_to_string strips a leading space
                text = " " + text if token.startswith("Ġ") else "\n"
            mapping.setdefault(text, []).append(index)
        return Vocabulary(eos, mapping)

    def compile(self, state: Any, schema: dict) -> Any:
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        # One optional space where JSON allows white space: the compact documents' ", " and ": ".
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="[ ]?")
        return Index(regex, state)

    def start(self, compiled: Any) -> Any:
        from outlines_core import Guide

        return Guide(compiled)

    def mask(self, matcher: Any) -> Any:
        return set(matcher.get_tokens())

    def allows(self, mask: Any, token: int) -> bool:
        return token in mask

    def advance(self, matcher: Any, token: int) -> None:
        matcher.advance(token)

    def accepting(self, matcher: Any) -> bool:
        return bool(matcher.is_finished())


class LMFormatEnforcer:
    name = "lm-format-enforcer"

    def version(self) -> str:
        from importlib.metadata import version

        return version("lm-format-enforcer")

    def setup(self, tokenizer: Any) -> Any:
        # Its transformers integration imports a module transformers 5 no longer has: the same data, built
        # as lmformatenforcer.integrations.transformers.build_token_enforcer_tokenizer_data builds it.
        from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData

        zero = tokenizer.encode("0", add_special_tokens=False)[-1]
        special = set(tokenizer.all_special_ids)
        regular = []
        for index in range(len(tokenizer)):
            if index in special:
                continue
            after_zero = tokenizer.decode([zero, index])[1:]
            regular.append((index, after_zero, len(after_zero) > len(tokenizer.decode([index]))))

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(ids)).rstrip("\ufffd")

        return TokenEnforcerTokenizerData(regular, decode, tokenizer.eos_token_id, False, len(tokenizer))

    def compile(self, state: Any, schema: dict) -> Any:
        from lmformatenforcer import JsonSchemaParser

        return state, JsonSchemaParser(schema)

    def start(self, compiled: Any) -> Any:
        from lmformatenforcer import TokenEnforcer

        data, parser = compiled
        return {"enforcer": TokenEnforcer(data, parser), "ids": []}

    def mask(self, matcher: Any) -> Any:
        return set(matcher["enforcer"].get_allowed_tokens(matcher["ids"]).allowed_tokens)

    def allows(self, mask: Any, token: int) -> bool:
        return token in mask

    def advance(self, matcher: Any, token: int) -> None:
        matcher["ids"].append(token)

    def accepting(self, matcher: Any) -> bool:
        # Accepting: the end-of-sequence token is allowed after the document.
        allowed = matcher["enforcer"].get_allowed_tokens(matcher["ids"]).allowed_tokens
        return matcher["enforcer"].eos_token_id in allowed if hasattr(matcher["enforcer"], "eos_token_id") else True


LIBRARIES: list[Callable[[], Any]] = [LLGuidance, XGrammar, OutlinesCore, LMFormatEnforcer]


def measure(adapter: Any, tokenizer: Any, schema: dict, documents: list[list[int]], repeats: int) -> dict:
    row: dict[str, Any] = {"library": adapter.name}
    try:
        row["version"] = adapter.version()
        started = time.perf_counter()
        state = adapter.setup(tokenizer)
        row["tokenizer_s"] = round(time.perf_counter() - started, 3)
        compile_times = []
        compiled = None
        for _ in range(repeats):
            started = time.perf_counter()
            compiled = adapter.compile(state, schema)
            compile_times.append(time.perf_counter() - started)
        row["compile_ms"] = round(1000 * statistics.median(compile_times), 2)
        mask_times: list[float] = []
        correct = True
        for _ in range(repeats):
            for ids in documents:
                matcher = adapter.start(compiled)
                for token in ids:
                    started = time.perf_counter()
                    mask = adapter.mask(matcher)
                    mask_times.append(time.perf_counter() - started)
                    if not adapter.allows(mask, token):
                        correct = False
                        row.setdefault("refused", []).append(tokenizer.decode(ids[: ids.index(token) + 1]))
                        break
                    adapter.advance(matcher, token)
                correct = correct and adapter.accepting(matcher)
        row["mask_ms_p50"] = round(1000 * statistics.median(mask_times), 4)
        row["mask_ms_p95"] = round(1000 * _percentile(mask_times, 0.95), 4)
        row["masks"] = len(mask_times)
        row["correct"] = correct
    except Exception as exc:  # a library that does not import or run is a row that says so
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        row["trace"] = traceback.format_exc(limit=2)[-600:]
    print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--extra-path", type=Path, action="append", default=[],
                        help="A folder of libraries installed outside the environment (pip --target)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-cache", type=Path, default=ROOT / "var" / "test-models")
    args = parser.parse_args(argv)
    for extra in args.extra_path:
        sys.path.append(str(extra.resolve()))

    from workers.runtime.local_lm import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct", cache_dir=args.model_cache)
    schema = step_schema()
    documents = [tokenizer.encode(text, add_special_tokens=False) for text in DOCUMENTS]
    rows = [measure(make(), tokenizer, schema, documents, args.repeats) for make in LIBRARIES]
    out = {
        "rows": rows,
        "config": {"tools": TOOLS, "documents": DOCUMENTS, "tokens": [len(d) for d in documents],
                   "vocabulary": len(tokenizer), "repeats": args.repeats, "tokenizer": "SmolLM2-135M-Instruct"},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, out)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
