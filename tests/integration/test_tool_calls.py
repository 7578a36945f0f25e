"""Tool calls on the CPU engine through the openai SDK against a real `archon serve`: tools whose
schemas have ``$defs`` (as ``openai.pydantic_function_tool`` writes them), arguments streamed as
they are generated (the SDK's stream helper accumulates and validates them), and answers cut by
``max_tokens`` that never show the internal wrapper.

The contract is asserted, never the bundled model's choices: where the model may either call a
tool or answer, both outcomes are checked for their shape. Raw answers and stream chunks are also
checked against OpenAI's own schemas (../shared/reference/openai-openapi.json).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.integration.test_openai_spec import validator
from tests.support.servers import MODEL, Server


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    home: Address


SAVE_PERSON = openai.pydantic_function_tool(Person, name="save_person")
SAVE_ASK = [{"role": "user", "content": "Save this person: Ann lives at Main St 1 in Oslo."}]
NAMED = {"type": "function", "function": {"name": "save_person"}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
JOKE_ASK = [{"role": "user", "content": "Tell me a joke."}]
WRAPPER_TEXT = ('{"response"', '"tool_calls"', '{"name"', '"arguments"')


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _sse(server: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion, read by hand, each valid against the spec."""
    schema = validator("CreateChatCompletionStreamResponse")
    chunks = []
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
                schema.validate(chunks[-1])
    return chunks


def test_defs_tool_arguments_parse_into_the_pydantic_model(client: openai.OpenAI) -> None:
    assert "$defs" in SAVE_PERSON["function"]["parameters"]  # was a 400 "Error resolving ref"
    reply = client.chat.completions.parse(
        model=MODEL,
        messages=SAVE_ASK,
        tools=[SAVE_PERSON],
        tool_choice=NAMED,
        temperature=0,
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "save_person"
        assert isinstance(call.function.parsed_arguments, Person)


def test_streamed_arguments_add_up_to_the_whole_answer(
    client: openai.OpenAI, server: Server
) -> None:
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": SAVE_ASK,
        "tools": [SAVE_PERSON],
        "tool_choice": NAMED,
        "temperature": 0,
        "max_tokens": 200,
    }
    whole = client.chat.completions.create(**kw)
    expected = [c.function.arguments for c in whole.choices[0].message.tool_calls or []]
    assert expected

    # The SDK's stream helper: it accumulates the argument deltas and validates them with the
    # pydantic model, as an application using it would.
    delta_events = 0
    with client.chat.completions.stream(**kw) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                delta_events += 1
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == expected
    assert all(isinstance(c.function.parsed_arguments, Person) for c in calls)
    assert delta_events > len(calls)  # streamed as generated, not one delta per call

    # By hand: the first delta of a call is its header, then argument fragments.
    chunks = _sse(server, kw)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    entries = [t for d in deltas for t in d.get("tool_calls") or []]
    headers = [t for t in entries if "id" in t]
    assert [h["index"] for h in headers] == list(range(len(expected)))
    for header in headers:
        assert header["type"] == "function" and header["id"].startswith("call_")
        assert header["function"] == {"name": "save_person", "arguments": ""}
    fragments = [t for t in entries if "id" not in t]
    assert all(set(t) == {"index", "function"} for t in fragments)
    for index, arguments in enumerate(expected):
        mine = "".join(t["function"]["arguments"] for t in fragments if t["index"] == index)
        assert mine == arguments
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_text_answers_stream_as_content(client: openai.OpenAI, server: Server) -> None:
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": JOKE_ASK,
        "tools": [WEATHER],
        "temperature": 0,
        "max_tokens": 60,
    }
    whole = client.chat.completions.create(**kw).choices[0]
    chunks = _sse(server, kw)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    pieces = [p for p in pieces if p]
    if whole.message.tool_calls:  # the model chose to call the tool: nothing to check here
        assert not pieces and whole.message.content is None
        return
    assert whole.message.content
    assert not any(marker in whole.message.content for marker in WRAPPER_TEXT)
    assert "".join(pieces) == whole.message.content
    assert len(pieces) > 1  # token by token, not one delta at the end


def _check_cut(content: str | None, calls: list[tuple[str, str]], finish: str | None) -> None:
    assert finish == "length"
    if content is not None:
        assert not any(marker in content for marker in WRAPPER_TEXT)
        assert not content.lstrip().startswith("{")
    for name, arguments in calls:
        assert name in ("save_person", "get_weather")
        assert not any(marker in arguments for marker in WRAPPER_TEXT[:2])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("tool_choice", ["auto", "required", "named"])
@pytest.mark.parametrize("max_tokens", [5, 16])
def test_answer_cut_by_max_tokens_shows_no_wrapper(
    client: openai.OpenAI, server: Server, stream: bool, tool_choice: str, max_tokens: int
) -> None:
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": JOKE_ASK if tool_choice == "auto" else SAVE_ASK,
        "tools": [SAVE_PERSON, WEATHER],
        "tool_choice": NAMED if tool_choice == "named" else tool_choice,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**kw)
        validator("CreateChatCompletionResponse").validate(json.loads(raw.text))
        choice = raw.parse().choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        _check_cut(choice.message.content, calls, choice.finish_reason)
        return
    content: str | None = None
    found: dict[int, list[str]] = {}
    finish = None
    for chunk in _sse(server, kw):
        for c in chunk["choices"]:
            finish = c["finish_reason"] or finish
            if c["delta"].get("content"):
                content = (content or "") + c["delta"]["content"]
            for d in c["delta"].get("tool_calls") or []:
                entry = found.setdefault(d["index"], ["", ""])
                entry[0] += d["function"].get("name", "")
                entry[1] += d["function"].get("arguments", "")
    _check_cut(content, [(n, a) for n, a in found.values()], finish)
