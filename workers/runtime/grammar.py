"""Constrained decoding: a JSON schema applied as a token mask in the local decode loop (llguidance).

A small local model asked for a JSON tool call writes prose, invents tools, or passes the schema
itself as the argument (docs/benchmarks-agents.md). Under a grammar it cannot: before each token the
decode loop (`workers.runtime.decode`) asks the grammar which tokens may come next and masks the
others' logits to -inf, so the output is always a prefix of a document the schema accepts, and the
loop stops as soon as the document is complete. llguidance was chosen by measurement on this CPU
(`benchmarks/grammar_libs.py`, docs/agents.md): it compiles a tool-call schema in milliseconds and
computes a mask in well under a millisecond, against a decode step of ~100 ms.

`tool_call_schema` builds the agent's schema from the offered tools: one branch per tool,
``{"tool": <its name>, "arguments": <its parameter schema>}``, plus ``{"answer": <text>}`` when an
answer is allowed. `JsonGrammar` compiles a schema once per tokenizer; `JsonGrammar.constraint()`
gives the per-generation state the decode loop drives (`TokenConstraint`). No Django; torch and
llguidance are imported lazily.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The JSON the grammar allows: compact separators as the prompts' demonstrations write them, no free
# white space (a small model under a permissive grammar pads with newlines until the token cap).
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# A final answer's characters at most. An unbounded string lets a looping model run to the token cap
# and leave the document unfinished; bounded, the grammar closes the string at the limit, so the step
# stays a valid answer within the agent's 128-token calls (~40 tokens of English; numbers are 1 token
# per digit). Under a grammar the decode loop's degeneration guard is off: the schema bounds the output.
ANSWER_MAX_CHARS = 160


def strict_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tool's parameter schema as the grammar enforces it: an object, no properties beyond the
    listed ones (unless the schema says otherwise), nested objects alike."""
    schema = copy.deepcopy(parameters) if parameters else {}
    if not schema:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    _close_objects(schema)
    return schema


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


def tool_call_schema(
    tools: list[tuple[str, dict[str, Any]]], *, allow_answer: bool = True, answer_max_chars: int = ANSWER_MAX_CHARS
) -> dict[str, Any]:
    """The JSON schema of one agent step: a call to one of ``tools`` ((name, parameter schema) pairs)
    with arguments valid for it, or (``allow_answer``) a final answer ``{"answer": "..."}``."""
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": name}, "arguments": strict_parameters(parameters)},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in tools
    ]
    if allow_answer:
        branches.append({
            "type": "object",
            "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": answer_max_chars}},
            "required": ["answer"],
            "additionalProperties": False,
        })
    if not branches:
        raise ValueError("a tool-call schema needs at least one tool or an answer")
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


class GrammarError(ValueError):
    """The schema does not compile to a grammar (unsupported keyword, invalid schema)."""


# The llguidance view of each tokenizer (about 0.3 s to build for SmolLM2): built once per tokenizer.
_tokenizers: dict[int, tuple[Any, Any]] = {}
_tokenizers_lock = threading.Lock()


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's tokenizer for a transformers fast tokenizer (cached per tokenizer object)."""
    import llguidance.hf

    with _tokenizers_lock:
        hit = _tokenizers.get(id(tokenizer))
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        built = llguidance.hf.from_tokenizer(tokenizer)
        _tokenizers[id(tokenizer)] = (tokenizer, built)  # the tokenizer is kept, so its id stays unique
        return built


@dataclass
class JsonGrammar:
    """A JSON schema compiled for one tokenizer. ``constraint()``: a fresh matcher for one generation."""

    schema: dict[str, Any]
    tokenizer: Any
    _grammar: str = field(init=False, repr=False)
    _ll_tokenizer: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import llguidance

        self._ll_tokenizer = ll_tokenizer(self.tokenizer)
        self._grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(self.schema), defaults=JSON_OPTIONS  # type: ignore[arg-type]  # a TypedDict
        )
        error = llguidance.LLMatcher.validate_grammar(self._grammar, self._ll_tokenizer)
        if error and not error.startswith("WARNING"):
            raise GrammarError(f"the schema does not compile: {error}")

    def constraint(self) -> TokenConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._ll_tokenizer, self._grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return TokenConstraint(matcher)


class TokenConstraint:
    """One generation's grammar state, driven by the decode loop.

    ``mask(logits)``: the logits (V,) with every token the grammar forbids next set to -inf;
    ``advance(token)``: the picked token consumed; ``finished``: the document is complete (nothing
    but the end may follow: the loop stops, as on EOS). EOS is allowed only where the document may end.
    """

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.masks = 0
        self.mask_s = 0.0

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import time

        import numpy as np
        import torch

        started = time.perf_counter()
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")  # (≥ V,), 1 where the grammar allows the token
        vocab = int(logits.shape[-1])
        allowed = allowed[:vocab]
        if allowed.shape[0] < vocab:  # the model's padded vocabulary: ids past the tokenizer's are never allowed
            allowed = np.concatenate([allowed, np.zeros(vocab - allowed.shape[0], dtype=np.uint8)])
        forbidden = torch.from_numpy(allowed == 0).to(logits.device)
        out = logits.float().masked_fill(forbidden, float("-inf"))
        self.masks += 1
        self.mask_s += time.perf_counter() - started
        return out

    def advance(self, token: int) -> bool:
        """Consume ``token``; False when the grammar refused it (the matcher is then in error)."""
        return bool(self.matcher.consume_token(int(token)))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None


_compiled: dict[tuple[int, str], JsonGrammar] = {}
_compiled_lock = threading.Lock()
_COMPILED_MAX = 256


def json_grammar(schema: dict[str, Any], tokenizer: Any) -> JsonGrammar:
    """``JsonGrammar(schema, tokenizer)``, cached (an agent offers the same tool set step after step)."""
    key = (id(tokenizer), json.dumps(schema, sort_keys=True))
    with _compiled_lock:
        hit = _compiled.get(key)
        if hit is not None and hit.tokenizer is tokenizer:
            return hit
    grammar = JsonGrammar(schema, tokenizer)
    with _compiled_lock:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        _compiled[key] = grammar
    return grammar


__all__ = [
    "ANSWER_MAX_CHARS",
    "GrammarError",
    "JsonGrammar",
    "TokenConstraint",
    "json_grammar",
    "ll_tokenizer",
    "strict_parameters",
    "tool_call_schema",
]
