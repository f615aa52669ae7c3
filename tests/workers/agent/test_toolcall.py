from workers.agent.decompose import parse_subtasks, subtasks_or_whole
from workers.agent.schema import _minimal_validate, validate_arguments
from workers.agent.toolcall import first_json_object, parse_reply
from workers.agent.tools import REGISTRY

SCHEMAS = {name: REGISTRY[name].parameters for name in ("area_rectangle", "perimeter_triangle", "log")}


def test_it_finds_the_first_json_object_in_prose_fences_and_single_quotes():
    assert first_json_object('Sure! {"tool": "add", "arguments": {"a": 1}} and {"answer": 2}') == {
        "tool": "add", "arguments": {"a": 1}
    }
    assert first_json_object('```json\n{"answer": "40"}\n```') == {"answer": "40"}
    assert first_json_object("{'tool': 'add', 'arguments': {'a': 1, 'b': True}}") == {
        "tool": "add", "arguments": {"a": 1, "b": True}
    }
    assert first_json_object('{"broken": } then {"answer": "ok"}') == {"answer": "ok"}
    assert first_json_object("no json here { at all") is None


def test_it_parses_a_valid_tool_call_and_repairs_numeric_strings():
    parsed = parse_reply('{"tool": "area_rectangle", "arguments": {"length": "8", "width": 5}}', schemas=SCHEMAS)
    assert parsed.kind == "tool"
    assert parsed.arguments == {"length": 8.0, "width": 5}


def test_it_rejects_unknown_tools_and_arguments_that_break_the_schema():
    unknown = parse_reply('{"tool": "launch", "arguments": {}}', schemas=SCHEMAS)
    assert unknown.kind == "invalid" and "unknown tool 'launch'" in unknown.problem
    missing = parse_reply('{"tool": "area_rectangle", "arguments": {"length": 8}}', schemas=SCHEMAS)
    assert missing.kind == "invalid" and "'width' is a required property" in missing.problem
    wrong = parse_reply('{"tool": "perimeter_triangle", "arguments": {"sides": "three"}}', schemas=SCHEMAS)
    assert wrong.kind == "invalid" and "is not of type 'array'" in wrong.problem
    extra = parse_reply('{"tool": "log", "arguments": {"number": 8, "colour": "red"}}', schemas=SCHEMAS)
    assert extra.kind == "tool" and extra.arguments == {"number": 8}  # unknown arguments are dropped
    assert parse_reply("The answer is 40.", schemas=SCHEMAS).problem == "the reply contains no JSON object"


def test_it_reads_answers_and_optional_arguments():
    assert parse_reply('{"answer": 40}', schemas=SCHEMAS).answer == "40"
    assert parse_reply('{"tool": "log", "arguments": {"number": 8}}', schemas=SCHEMAS).kind == "tool"


def test_the_minimal_validator_agrees_with_jsonschema(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_jsonschema(name, *args, **kwargs):
        if name == "jsonschema":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    schema = SCHEMAS["area_rectangle"]
    assert validate_arguments(schema, {"length": 8, "width": 5})[1] == []
    problems = [str(p) for p in validate_arguments(schema, {"length": "x", "depth": 2})[1]]
    assert "'width' is a required property" in problems
    assert all("depth" not in p for p in problems)  # dropped before validation
    assert [str(p) for p in _minimal_validate(schema, {"length": 1, "width": 2, "depth": 2})] == [
        "unexpected property 'depth'"
    ]
    assert any(p.startswith("length:") for p in problems)


def test_it_parses_numbered_lists_and_falls_back_on_junk():
    text = (
        "Here are the steps:\n1. Calculate the area of the rectangle\n"
        "2) Take the square root of the area\n- Find the circumference of the circle"
    )
    assert parse_subtasks(text, max_steps=5) == [
        "Calculate the area of the rectangle",
        "Take the square root of the area",
        "Find the circumference of the circle",
    ]
    assert parse_subtasks("1. a\n2. Reply only with a numbered list\n3. 42", max_steps=5) == []
    assert parse_subtasks("1. <first step>\n2. <second step>\n3. Take the <last step>", max_steps=5) == []
    invented = "1. Calculate the area of the rectangle\n2. Find the maximum value in a list of integers"
    assert parse_subtasks(invented, max_steps=5, task="Area of a rectangle 8 by 5?") == [
        "Calculate the area of the rectangle"
    ]
    assert subtasks_or_whole("The answer is 40!!!", task="Area of 8x5?", max_steps=5) == (["Area of 8x5?"], True)
    repeated = "1. Add the two numbers\n2. Add the two numbers\n3. add the two numbers."
    assert parse_subtasks(repeated, max_steps=5) == ["Add the two numbers"]
    assert len(parse_subtasks("\n".join(f"{i}. step number {i}" for i in range(1, 9)), max_steps=3)) == 3
    assert parse_subtasks("1. Area of the square 2. Add 3 to the area 3) Report it back", max_steps=5) == [
        "Area of the square", "Add 3 to the area", "Report it back"
    ]
