"""The agent loop with a scripted fake model: deterministic, no model weights."""

import json
import time

from tests.workers.agent.conftest import CannedSearch, ScriptedModel, run_builtin, spec
from workers.agent.loop import AgentConfig, ModelReply, ToolCallRequest, run_agent

RECTANGLE = {"rectangle": [("area_rectangle", 0.72), ("perimeter_rectangle", 0.55)]}


def _run(model, search, execute=run_builtin, **config):
    return run_agent(request=config.pop("request", "What is the area of a rectangle 8 by 5?"),
                     config=AgentConfig(**config), model=model, search=search, execute=execute)


def test_it_answers_with_a_tool_found_for_the_one_subtask():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "The area is 40."}',
    )
    result = _run(model, CannedSearch(RECTANGLE), top_k=5, threshold=0.5)
    assert result.answer == "The area is 40."
    assert result.finish_reason == "stop"
    assert result.tools_called == ["area_rectangle"]
    assert result.model_calls == 3
    step = result.steps[1]
    assert step["tools_found"] == [
        {"name": "area_rectangle", "score": 0.72},
        {"name": "perimeter_rectangle", "score": 0.55},
    ]
    call = step["calls"][0]["tool_calls"][0]
    assert (call["tool"], call["arguments"], call["result"], call["error"]) == (
        "area_rectangle",
        {"length": 8, "width": 5},
        40,
        None,
    )
    assert call["duration_ms"] >= 0
    assert "Result of area_rectangle: 40" in model.calls[2]["messages"][-1]["content"]


def test_it_offers_only_the_tools_it_found_above_the_threshold():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    result = _run(model, CannedSearch(RECTANGLE), threshold=0.6)
    system = model.calls[1]["messages"][-1]["content"]
    assert '"name": "area_rectangle"' in system
    assert "perimeter_rectangle" not in system  # 0.55 < 0.6
    assert "volume_sphere" not in system
    assert result.tools_offered == ["area_rectangle"]
    assert result.steps[1]["searches"][0]["hits"][1] == {"name": "perimeter_rectangle", "score": 0.55, "passed": False}


def test_it_decomposes_a_subtask_without_tools_further_down_to_the_depth_limit():
    search = CannedSearch({"circle": [("area_circle", 0.8)], "square": [("area_square", 0.7)]})
    model = ScriptedModel(
        "1. Work out both areas",                               # depth 0: one vague subtask, no tool passes
        "1. Area of the circle of radius 2\n2. Area of the square of side 3",  # depth 1 decomposition
        '{"tool": "area_circle", "arguments": {"radius": 2}}',
        '{"tool": "area_square", "arguments": {"side_length": 3}}',
        '{"answer": "12.57 and 9"}',
    )
    result = _run(model, search, max_depth=1, threshold=0.5, request="Circle r=2 and square s=3 areas?")
    step = result.steps[1]
    assert [s["depth"] for s in step["searches"]] == [0, 1, 1]
    assert step["tools_offered"] == ["area_circle", "area_square"]
    assert result.tools_called == ["area_circle", "area_square"]
    assert result.answer == "12.57 and 9"


def test_it_stops_decomposing_at_max_depth():
    search = CannedSearch({})
    model = ScriptedModel(
        "1. Do something vague",
        "1. Something vague, part one\n2. Something vague, part two",
        "I cannot tell.",
    )
    result = _run(model, search, max_depth=1, threshold=0.5, request="Something vague")
    step = result.steps[1]
    assert [s["depth"] for s in step["searches"]] == [0, 1, 1]  # depth-1 parts are not decomposed again
    assert len(step["decompositions"]) == 1
    assert step["tools_offered"] == []
    assert result.answer == "I cannot tell."  # answered without tools, in the composition call
    zero = _run(
        ScriptedModel("1. Do something vague", "No idea."),
        CannedSearch({}),
        max_depth=0,
        request="Something vague",
    )
    assert zero.steps[1]["decompositions"] == []


def test_a_further_decomposition_must_leave_two_calls_to_solve():
    model = ScriptedModel("1. Do something vague", "I cannot tell.")
    result = _run(model, CannedSearch({}), max_depth=3, step_limit=3, request="Something vague")
    assert result.steps[1]["decompositions"] == []
    assert result.model_calls == 2


def test_junk_decomposition_falls_back_to_the_whole_request():
    model = ScriptedModel(
        "sure!!! 40 40 40",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    result = _run(model, CannedSearch(RECTANGLE))
    assert result.steps[0]["fell_back"] is True
    assert result.steps[1]["subtask"] == "What is the area of a rectangle 8 by 5?"


def test_an_invalid_reply_gets_one_corrective_retry():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8}}',
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    result = _run(model, CannedSearch(RECTANGLE))
    calls = result.steps[1]["calls"]
    assert calls[0]["corrective_retry"] is True
    assert "'width' is a required property" in calls[0]["problem"]
    retry = model.calls[2]["messages"]
    assert "Your previous reply was not valid" in retry[-1]["content"]
    assert '{"tool": "area_rectangle", "arguments": {"length": "...", "width": "..."}}' in retry[-1]["content"]
    assert len(retry) == len(model.calls[1]["messages"])  # the invalid reply is not kept
    assert result.answer == "40"


def test_an_answer_before_any_tool_result_is_sent_back_once():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"answer": "about 50"}',
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    result = _run(model, CannedSearch(RECTANGLE))
    assert result.steps[1]["calls"][0]["problem"].startswith("no tool was called yet")
    assert result.answer == "40"
    stubborn = ScriptedModel("1. Calculate the area of the rectangle", '{"answer": "about 50"}', '{"answer": "50"}')
    assert _run(stubborn, CannedSearch(RECTANGLE)).answer == "50"


def test_the_json_prompt_demonstrates_the_format_before_the_task():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    _run(model, CannedSearch(RECTANGLE))
    messages = model.calls[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == '{"tool": "get_weather", "arguments": {"city": "Paris"}}'
    assert messages[-1]["content"].startswith("Tools:\n{") and "Task: What is the area" in messages[-1]["content"]


def test_two_invalid_replies_in_a_row_end_the_subtask_with_the_raw_text():
    model = ScriptedModel("1. Calculate the area of the rectangle", "It is forty.", "Forty, I said.")
    result = _run(model, CannedSearch(RECTANGLE))
    assert result.answer == "Forty, I said."
    assert result.model_calls == 3


def test_it_stops_at_the_step_limit():
    calls = [f'{{"tool": "area_rectangle", "arguments": {{"length": {n}, "width": 5}}}}' for n in range(1, 20)]
    model = ScriptedModel("1. Calculate the area of the rectangle", *calls)
    result = _run(model, CannedSearch(RECTANGLE), step_limit=4)
    assert result.finish_reason == "step_limit"
    assert result.model_calls == 4
    assert len(result.tools_called) == 3
    assert result.answer.startswith("Stopped at the step limit (4 model calls).")


def test_a_repeated_identical_call_answers_with_its_earlier_result():
    again = '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}'
    result = _run(ScriptedModel("1. Calculate the area of the rectangle", again, again), CannedSearch(RECTANGLE))
    assert result.answer == "40"
    assert result.tools_called == ["area_rectangle"]


def test_a_slow_tool_times_out_and_the_model_hears_about_it():
    def slow(tool, arguments):
        time.sleep(2)
        return 1

    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "unknown"}',  # no tool result yet: the agent asks once for a tool call
        '{"answer": "unknown"}',
    )
    started = time.perf_counter()
    result = _run(model, CannedSearch(RECTANGLE), execute=slow, tool_timeout_s=0.2)
    assert time.perf_counter() - started < 1.5
    call = result.steps[1]["calls"][0]["tool_calls"][0]
    assert call["error"] == "timed out after 0.2 s"
    assert "Error from area_rectangle: timed out" in model.calls[2]["messages"][-1]["content"]


def test_several_subtasks_chain_results_and_compose_one_answer():
    search = CannedSearch({"rectangle": [("area_rectangle", 0.8)], "root": [("sqrt", 0.75)]})
    model = ScriptedModel(
        "1. Calculate the area of the rectangle\n2. Take the square root of the area",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 2}}',
        '{"answer": "16"}',
        '{"tool": "sqrt", "arguments": {"number": 16}}',
        '{"answer": "4"}',
        "The square root of the area is 4.",
    )
    tokens = []
    result = run_agent(request="Area of an 8 by 2 rectangle, then its square root?", config=AgentConfig(),
                       model=model, search=search, execute=run_builtin, on_answer_token=tokens.append)
    assert "- Calculate the area of the rectangle: 16" in model.calls[3]["messages"][-1]["content"]
    assert model.calls[5]["purpose"] == "answer"
    assert result.answer == "The square root of the area is 4." == "".join(tokens)
    assert result.tools_offered == ["area_rectangle", "sqrt"]
    assert [s["type"] for s in result.steps] == ["decompose", "subtask", "subtask", "answer"]


def test_openai_mode_sends_tool_definitions_and_feeds_results_back():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        ModelReply(
            text="",
            tool_calls=[
                ToolCallRequest(id="c1", name="area_rectangle", arguments='{"length": 8, "width": 5}')
            ],
        ),
        ModelReply(text="", tool_calls=[ToolCallRequest(id="c2", name="volume_sphere", arguments="{}")]),
        "The area is 40.",
    )
    result = _run(model, CannedSearch(RECTANGLE), mode="openai")
    offered = [d["function"]["name"] for d in model.calls[1]["tools"]]
    assert offered == ["area_rectangle", "perimeter_rectangle"]
    assert model.calls[2]["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "40"}
    assert model.calls[3]["messages"][-1]["content"].startswith("Error: unknown tool 'volume_sphere'")
    assert result.answer == "The area is 40."
    assert result.tools_called == ["area_rectangle"]


def test_tool_errors_are_recorded_and_reported_back():
    model = ScriptedModel(
        "1. Divide ten by zero",
        '{"tool": "divide", "arguments": {"a": 10, "b": 0}}',
        '{"answer": "undefined"}',
        '{"answer": "undefined"}',
    )
    result = _run(model, CannedSearch({"divide": [("divide", 0.9)]}), request="Divide ten by zero?")
    call = result.steps[1]["calls"][0]["tool_calls"][0]
    assert call["error"].startswith("ZeroDivisionError")
    assert result.answer == "undefined"
    json.dumps(result.steps)  # the steps are plain JSON


def test_found_tools_are_the_specs_the_search_returned():
    assert spec("sqrt").parameters["required"] == ["number"]


# --------------------------------------------------------------------------- constrained steps, tool outcome


def test_json_steps_carry_a_grammar_of_the_offered_tools_with_no_answer_before_a_result():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "The area is 40."}',
    )
    result = _run(model, CannedSearch(RECTANGLE), threshold=0.5)
    first, second = (call["grammar"] for call in model.calls[1:3])
    assert [b["properties"]["tool"]["const"] for b in first["anyOf"]] == ["area_rectangle", "perimeter_rectangle"]
    assert second["anyOf"][-1]["required"] == ["answer"]
    assert model.calls[0]["grammar"] is None  # the decomposition is free text
    assert all(call["valid"] for call in result.steps[1]["calls"])
    assert result.tool_outcome == "tools_called"


def test_unconstrained_json_steps_carry_no_grammar():
    model = ScriptedModel(
        "1. Calculate the area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "40"}',
    )
    _run(model, CannedSearch(RECTANGLE), threshold=0.5, constrained=False)
    assert [call["grammar"] for call in model.calls] == [None, None, None]


def test_a_run_offered_tools_that_called_none_is_labelled_no_tool_called():
    # Unconstrained, the model answers twice from its own arithmetic: no tool runs.
    model = ScriptedModel("1. Area of the rectangle", '{"answer": "41"}', '{"answer": "41"}')
    result = _run(model, CannedSearch(RECTANGLE), threshold=0.5, constrained=False)
    assert result.tools_offered and result.tools_called == []
    assert result.answer == "41"
    assert result.finish_reason == "stop"
    assert result.tool_outcome == "no_tool_called"


def test_a_run_whose_tool_failed_is_labelled_tool_failed():
    def broken(tool, arguments):
        raise RuntimeError("the tool's backend is down")

    model = ScriptedModel(
        "1. Area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"answer": "I could not compute it."}',
    )
    result = _run(model, CannedSearch(RECTANGLE), execute=broken, threshold=0.5)
    assert result.tools_called == ["area_rectangle"]
    assert "backend is down" in result.steps[1]["calls"][0]["tool_calls"][0]["error"]
    assert result.tool_outcome == "tool_failed"


def test_a_failure_followed_by_a_successful_call_is_not_a_failure():
    attempts = []

    def flaky(tool, arguments):
        attempts.append(arguments)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return run_builtin(tool, arguments)

    model = ScriptedModel(
        "1. Area of the rectangle",
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5}}',
        '{"tool": "area_rectangle", "arguments": {"length": 8, "width": 5.0}}',
        '{"answer": "40"}',
    )
    result = _run(model, CannedSearch(RECTANGLE), execute=flaky, threshold=0.5)
    assert len(attempts) == 2
    assert result.tool_outcome == "tools_called"


def test_a_run_with_no_tool_found_is_labelled_no_tools_found():
    model = ScriptedModel("1. Write a haiku", "1. Write a haiku", "An old silent pond")
    result = _run(model, CannedSearch({}, low=None), threshold=0.5, request="Write a haiku")
    assert result.tools_offered == []
    assert result.tool_outcome == "no_tools_found"


def test_the_engine_labels_are_the_run_models_choices():
    from apps.agents.models import ToolOutcome
    from workers.agent.loop import TOOL_OUTCOMES

    assert set(TOOL_OUTCOMES) == set(ToolOutcome.values)
