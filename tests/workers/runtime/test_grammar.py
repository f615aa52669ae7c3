"""Constrained decoding: a tool-call schema applied as a token mask makes SmolLM2 emit schema-valid calls."""

from __future__ import annotations

import json

import pytest
import torch

from workers.agent.schema import validate_arguments
from workers.agent.toolcall import DEMO_TURNS, JSON_SYSTEM
from workers.agent.tools import REGISTRY
from workers.runtime.grammar import GrammarError, json_grammar, strict_parameters, tool_call_schema
from workers.runtime.meter import generate

TOOLS = ["add", "multiply", "area_rectangle"]


def offered() -> list[tuple[str, dict]]:
    return [(name, REGISTRY[name].parameters) for name in TOOLS]


def listing() -> str:
    return "\n".join(
        json.dumps({"name": n, "description": REGISTRY[n].description, "parameters": REGISTRY[n].parameters})
        for n in TOOLS
    )


def messages(task: str) -> list[dict]:
    return [
        {"role": "system", "content": JSON_SYSTEM},
        *[dict(turn) for turn in DEMO_TURNS],
        {"role": "user", "content": f"Tools:\n{listing()}\nTask: {task}"},
    ]


def test_it_builds_one_branch_per_tool_and_one_for_the_answer():
    schema = tool_call_schema(offered())
    branches = schema["anyOf"]
    assert [b["properties"].get("tool", {}).get("const") for b in branches] == [*TOOLS, None]
    assert branches[-1]["required"] == ["answer"]
    assert branches[0]["properties"]["arguments"]["additionalProperties"] is False
    assert "anyOf" not in tool_call_schema(offered()[:1], allow_answer=False)


def test_it_closes_objects_without_changing_the_tools_own_schema():
    parameters = {"type": "object", "properties": {"a": {"type": "number"}}}
    assert strict_parameters(parameters)["additionalProperties"] is False
    assert "additionalProperties" not in parameters
    assert strict_parameters({}) == {"type": "object", "properties": {}, "additionalProperties": False}


def test_the_mask_allows_exactly_the_documents_of_the_schema(smollm2):
    grammar = json_grammar(tool_call_schema(offered()), smollm2.tokenizer)
    constraint = grammar.constraint()
    vocab = smollm2.model.config.vocab_size
    ids = smollm2.tokenizer.encode('{"tool": "add", "arguments": {"a": 2, "b": 3}}', add_special_tokens=False)
    for token in ids:
        logits = constraint.mask(torch.zeros(vocab))
        assert torch.isfinite(logits[token]), smollm2.tokenizer.decode([token])
        assert constraint.advance(token)
    assert constraint.finished
    # An unknown tool name is refused from its first differing character on.
    fresh = grammar.constraint()
    for token in smollm2.tokenizer.encode('{"tool": "', add_special_tokens=False):
        fresh.mask(torch.zeros(vocab))
        fresh.advance(token)
    allowed = torch.isfinite(fresh.mask(torch.zeros(vocab))).nonzero().flatten().tolist()
    starts = {smollm2.tokenizer.decode([t])[:1] for t in allowed}
    assert starts <= {"a", "m"}, starts


def test_it_refuses_a_schema_that_does_not_compile(smollm2):
    with pytest.raises(GrammarError):
        json_grammar({"type": "object", "properties": {"a": {"type": "no-such-type"}}}, smollm2.tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("task", [
    "Add 1234 and 5678.",
    "What is 17 times 23?",
    "Calculate the area of a rectangle with a length of 8 meters and a width of 5 meters.",
])
def test_the_real_model_emits_a_schema_valid_call_to_an_offered_tool(smollm2, task):
    schema = tool_call_schema(offered(), allow_answer=False)
    result = generate(target=smollm2, messages=messages(task), max_output_tokens=64, wall_time_limit_s=120,
                      grammar=schema)
    call = json.loads(result.text)  # the whole text is one JSON document: nothing before or after it
    assert result.finish_reason == "stop"
    assert set(call) == {"tool", "arguments"}
    assert call["tool"] in TOOLS
    repaired, problems = validate_arguments(REGISTRY[call["tool"]].parameters, call["arguments"])
    assert problems == []
    assert set(call["arguments"]) <= set(REGISTRY[call["tool"]].parameters["properties"])


def test_a_looping_answer_is_closed_at_its_length_limit_not_cut_mid_document(smollm2):
    # Scripted logits: the model wants " loop" forever. The degeneration guard would stop it mid-string (an
    # invalid document); under the grammar the answer's maxLength closes the string and the object instead.
    from workers.runtime.decode import decode, eos_ids

    tokenizer = smollm2.tokenizer
    loop = tokenizer.encode(" loop", add_special_tokens=False)
    assert len(loop) == 1
    vocab = smollm2.model.config.vocab_size

    def logits() -> torch.Tensor:
        out = torch.zeros(vocab)
        out[loop[0]] = 10.0
        return out

    constraint = json_grammar(tool_call_schema([], answer_max_chars=30), tokenizer).constraint()
    result = decode(first_logits=logits(), step=lambda token: logits(), tokenizer=tokenizer, eos=eos_ids(smollm2),
                    max_new_tokens=64, deadline=float("inf"), constraint=constraint)
    document = json.loads(result.text)
    assert result.finish_reason == "stop"
    assert document["answer"].startswith(" loop loop") and len(document["answer"]) <= 30
    assert constraint.finished
