"""The Responses API translation (archon.openai.responses*): requests to chat bodies, chat
answers and chat streams back to Response objects and typed events, checked against the
schemas of OpenAI's published spec (../shared/reference/openai-openapi.json)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from archon.errors import InvalidRequestError
from archon.openai.responses import ResponsesRequest, Translation, responses_param, to_chat
from archon.openai.responses_output import from_chat_completion
from archon.openai.responses_stream import ResponseEvents, response_stream

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.json"


def translate(**body: Any) -> Translation:
    return to_chat(ResponsesRequest.model_validate({"model": "m", **body}))


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        pytest.skip(f"OpenAI's spec is not at {SPEC_PATH}")
    return json.loads(SPEC_PATH.read_text())


def check(spec: dict[str, Any], name: str, value: Any) -> None:
    """``value`` against the spec's schema ``name`` (OpenAPI 3.1 is JSON Schema 2020-12)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


# -- requests ------------------------------------------------------------------------------


def test_text_input_and_instructions_become_system_and_user_messages() -> None:
    t = translate(input="Hi", instructions="Be brief.", max_output_tokens=20, temperature=0)
    assert t.chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 20,
        "temperature": 0,
    }
    assert t.origins == ["instructions", "input"]


def test_items_become_messages_with_tool_calls_and_tool_results() -> None:
    t = translate(
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "6*7?"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "mul", "arguments": '{"a":6}'},
            {"type": "function_call", "call_id": "c2", "name": "mul", "arguments": '{"a":7}'},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "42", "annotations": []}],
            },
        ]
    )
    messages = t.chat["messages"]
    assert [m["role"] for m in messages] == ["developer", "user", "assistant", "tool", "assistant"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "mul", "arguments": '{"a":6}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert messages[4]["content"] == "42"
    assert t.origins == ["input[0]", "input[1]", "input[2]", "input[4]", "input[6]"]


def test_flat_function_tools_tool_choice_and_text_format_become_chat_fields() -> None:
    params = {"type": "object", "properties": {"a": {"type": "integer"}}}
    t = translate(
        input="x",
        tools=[{"type": "function", "name": "f", "parameters": params, "strict": True}],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        stream=True,
    )
    assert t.chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": params, "strict": True}}
    ]
    assert t.chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert t.chat["parallel_tool_calls"] is False
    assert t.chat["stream_options"] == {"include_usage": True}
    fmt = {"type": "json_schema", "name": "P", "schema": params, "strict": True}
    t = translate(input="x", text={"format": fmt})
    assert t.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "P", "schema": params, "strict": True},
    }
    assert translate(input="x", text={"format": {"type": "json_object"}}).chat[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in translate(input="x", text={"format": {"type": "text"}}).chat


def test_allowed_tools_narrow_the_tools() -> None:
    tools = [{"type": "function", "name": n, "parameters": {}} for n in ("a", "b")]
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "b"}],
    }
    t = translate(input="x", tools=tools, tool_choice=choice)
    assert [tool["function"]["name"] for tool in t.chat["tools"]] == ["b"]
    assert t.chat["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"type": "computer_call_output"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ],
)
def test_what_needs_state_or_absent_features_is_a_400_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        translate(**{"input": "x", **body})
    assert caught.value.param == param


def test_store_true_is_accepted_and_answered_as_not_stored() -> None:
    t = translate(input="x", store=True, metadata={"k": "v"})
    assert "store" not in t.chat and "metadata" not in t.chat
    completion = {
        "model": "m",
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    }
    response = from_chat_completion(completion, t)
    assert response["store"] is False and response["metadata"] == {"k": "v"}


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("messages", "input"),
        ("messages[1].content", "input"),
        ("messages[0]", "instructions"),
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("tools[2].function.name", "tools[2].name"),
        ("tool_choice", "tool_choice"),
        ("temperature", "temperature"),
        ("stream_options.include_usage", "stream"),
        (None, None),
    ],
)
def test_chat_error_params_are_named_as_responses_fields(
    chat: str | None, responses: str | None
) -> None:
    assert responses_param(chat, ["instructions", "input"]) == responses


# -- whole answers ---------------------------------------------------------------------------


def test_a_chat_completion_becomes_a_response_valid_against_the_spec(spec: dict[str, Any]) -> None:
    t = translate(input="x", instructions="be brief", max_output_tokens=16)
    completion = {
        "id": "chatcmpl-1",
        "model": "served",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        "sources": [{"index": 1, "path": "a.md"}],
    }
    response = from_chat_completion(completion, t)
    check(spec, "Response", response)
    assert response["status"] == "completed" and response["incomplete_details"] is None
    assert response["model"] == "served" and response["instructions"] == "be brief"
    [item] = response["output"]
    assert item["type"] == "message" and item["content"][0]["text"] == "Hello"
    assert response["usage"]["input_tokens"] == 5 and response["usage"]["output_tokens"] == 2
    assert response["sources"] == completion["sources"]


def test_tool_calls_become_function_call_items_and_length_is_incomplete(
    spec: dict[str, Any],
) -> None:
    t = translate(input="x", tools=[{"type": "function", "name": "f", "parameters": {}}])
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    completion = {
        "model": "m",
        "choices": [
            {"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}
        ],
    }
    response = from_chat_completion(completion, t)
    check(spec, "Response", response)
    [item] = response["output"]
    assert (item["type"], item["call_id"], item["name"], item["arguments"]) == (
        "function_call",
        "call_1",
        "f",
        "{}",
    )
    cut = {"model": "m", "choices": [{"message": {"content": "Hel"}, "finish_reason": "length"}]}
    response = from_chat_completion(cut, t)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


# -- streams ---------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
)


def run_stream(t: Translation, raw: bytes, split: int = 7) -> list[dict[str, Any]]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), split):  # split anywhere, as a network does
            yield raw[start : start + split]

    async def collect() -> list[bytes]:
        return [event async for event in response_stream(pieces(), t)]

    events = []
    for framed in asyncio.run(collect()):
        head, data = framed.decode().strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def check_events(spec: dict[str, Any], events: list[dict[str, Any]]) -> None:
    for event in events:
        check(spec, "ResponseStreamEvent", event)


def test_a_text_stream_becomes_the_typed_events_in_order(spec: dict[str, Any]) -> None:
    raw = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"content": "Hel"})
        + chunk({"content": "lo"})
        + chunk({}, "stop")
        + USAGE.replace(b'{"choices"', b'{"sources":[{"index":1}],"choices"')
        + b"data: [DONE]\n\n"
    )
    events = run_stream(translate(input="x", stream=True), raw)
    check_events(spec, events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["total_tokens"] == 5 and final["sources"] == [{"index": 1}]
    assert len({e["item_id"] for e in events if "item_id" in e}) == 1


def test_streamed_tool_calls_become_function_call_events(spec: dict[str, Any]) -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a"'},
    }
    rest = {"index": 0, "function": {"arguments": ":1}"}}
    raw = chunk({"tool_calls": [first]}) + chunk({"tool_calls": [rest]}) + chunk({}, "tool_calls")
    events = run_stream(translate(input="x", stream=True), raw + USAGE + b"data: [DONE]\n\n")
    check_events(spec, events)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[5]["arguments"] == '{"a":1}' and events[5]["name"] == "f"
    assert events[6]["item"]["call_id"] == "call_1"


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(spec: dict[str, Any]) -> None:
    raw = chunk({"content": "Hel"}) + chunk({}, "length") + USAGE + b"data: [DONE]\n\n"
    events = run_stream(translate(input="x", stream=True, max_output_tokens=16), raw)
    check_events(spec, events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


def test_an_error_mid_stream_is_an_error_event_then_response_failed(spec: dict[str, Any]) -> None:
    error = {
        "error": {
            "message": "upstream broke",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_failed",
        }
    }
    raw = (
        chunk({"content": "Hel"}) + b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"
    )
    events = run_stream(translate(input="x", stream=True), raw)
    check_events(spec, events)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["message"] == "upstream broke" and events[-2]["code"] == "upstream_failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


def test_a_stream_that_stops_without_done_fails() -> None:
    events = run_stream(translate(input="x", stream=True), chunk({"content": "Hel"}))
    assert events[-1]["type"] == "response.failed"


def test_an_empty_answer_is_still_one_message() -> None:
    events = ResponseEvents(translate(input="x", stream=True))
    out = events.feed(
        {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    out += events.finish()
    assert [e["type"] for e in out][-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert out[-1]["response"]["output"][0]["content"][0]["text"] == ""
