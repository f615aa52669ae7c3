"""OpenAI-style tool calling through the runtime client and the meter (a mock endpoint)."""

import json

import httpx

from workers.runtime.meter import generate
from workers.runtime.openai_compat import OpenAICompatClient, OpenAICompatConfig

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {"type": "object"}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}


def _client(handler):
    return OpenAICompatClient(
        OpenAICompatConfig(base_url="http://llm.test/v1", model="m"), transport=httpx.MockTransport(handler)
    )


def test_tools_are_sent_and_tool_calls_come_back_through_the_meter():
    seen = {}

    def handler(request):
        seen["payload"] = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "model": "m",
                "usage": {"prompt_tokens": 11, "completion_tokens": 7},
                "choices": [
                    {
                        "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                        "finish_reason": "tool_calls",
                    }
                ],
            },
        )

    result = generate(target=_client(handler), messages=[{"role": "user", "content": "1+2?"}], max_output_tokens=16,
                      wall_time_limit_s=5, tools=TOOLS)
    assert seen["payload"]["tools"] == TOOLS
    assert result.tool_calls == [CALL]
    assert (result.text, result.finish_reason, result.prompt_tokens) == ("", "stop", 11)


def test_without_tools_the_payload_is_unchanged():
    seen = {}

    def handler(request):
        seen["payload"] = json.loads(request.content)
        return httpx.Response(200, json={"choices": [{"message": {"content": "3"}, "finish_reason": "stop"}]})

    result = generate(
        target=_client(handler),
        messages=[{"role": "user", "content": "1+2?"}],
        max_output_tokens=4,
        wall_time_limit_s=5,
    )
    assert "tools" not in seen["payload"]
    assert result.tool_calls is None and result.text == "3"


def test_streamed_tool_calls_are_reassembled_from_their_pieces():
    events = [
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "call_1", "function": {"name": "add", "arguments": '{"a": 1'}}
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ', "b": 2}'}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    client = _client(lambda request: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"}))
    completion = client.chat_stream([{"role": "user", "content": "1+2?"}], max_tokens=8, tools=TOOLS)
    assert completion.tool_calls == [CALL]
