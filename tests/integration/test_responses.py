"""``POST /v1/responses`` end to end with the real ``openai`` SDK (``client.responses``): against
a real ``archon serve`` (bundled SmolLM2-135M) and through a real agent with a knowledge base
over the Prometheus querying docs. Archon's contract is asserted (shapes, event order, parse
success, errors), never the tiny model's wit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.support.servers import MODEL, Server
from tests.support.stack import querying_docs_sources, running_agent, start_kb

pytestmark = pytest.mark.slow

MULTIPLY = {
    "type": "function",
    "name": "multiply",
    "description": "Multiply two integers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    },
}
DEPLOYMENT = {
    "type": "object",
    "properties": {
        "service": {"type": "string", "enum": ["agent", "kb", "model-server"]},
        "replicas": {"type": "integer", "minimum": 1},
    },
    "required": ["service", "replicas"],
    "additionalProperties": False,
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
QUESTION = "How does the rate() function compute the per-second average rate of a counter?"
AGENT_ENV = {"ARCHON_AGENT_MAX_CONTEXT_CHARS": "2500"}


class Person(BaseModel):
    name: str
    age: int


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("responses-kb")
    server = start_kb(tmp, querying_docs_sources(tmp))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server, kb: Server) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("responses-agent")
    with running_agent(tmp, [server.url], kb.url, AGENT_ENV) as agent:
        yield agent


@pytest.fixture(params=["model-server", "agent"])
def target(request: pytest.FixtureRequest) -> Server:
    """The same contract on both servers (the agent's fixtures start only when asked for)."""
    return request.getfixturevalue("server" if request.param == "model-server" else "agent")


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of the same delta type as one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


# -- both servers ----------------------------------------------------------------------------


def test_text_input_answers_a_response(target: Server) -> None:
    r = sdk(target).responses.create(
        model=MODEL, input="Say hi.", max_output_tokens=32, temperature=0, store=True
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text and r.output_text == r.output[0].content[0].text
    assert r.store is False  # accepted, and nothing is stored
    assert r.usage is not None and r.usage.input_tokens > 0
    assert 0 < r.usage.output_tokens <= 32
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_events_come_in_the_specs_order(target: Server) -> None:
    client = sdk(target)
    events = list(
        client.responses.create(
            model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0, stream=True
        )
    )
    types = collapse([e.type for e in events])
    assert types[:-1] == TEXT_EVENTS
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens > 0
    # The SDK's own stream helper reads the events into the final response, parsed (it needs
    # response.completed: a schema's grammar makes the answer end on its own).
    with client.responses.stream(
        model=MODEL,
        input="Invent a person. Give their name and age.",
        text_format=Person,
        max_output_tokens=60,
        temperature=0,
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text and final.status == "completed"
    assert isinstance(final.output_parsed, Person)


def test_parse_returns_the_pydantic_object(target: Server) -> None:
    r = sdk(target).responses.parse(
        model=MODEL,
        input="Invent a person. Give their name and age.",
        text_format=Person,
        temperature=0,
        max_output_tokens=60,
    )
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Person)


def test_json_schema_format_answers_valid_json(target: Server) -> None:
    r = sdk(target).responses.create(
        model=MODEL,
        input="Describe a deployment as JSON.",
        text={"format": {"type": "json_schema", "name": "deployment", "schema": DEPLOYMENT}},
        temperature=0,
        max_output_tokens=60,
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), DEPLOYMENT)


def test_required_tool_call_then_its_output_in_a_second_turn(target: Server) -> None:
    client = sdk(target)
    question = [{"role": "user", "content": "What is 6 times 7?"}]
    kw: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_output_tokens": 80}
    first = client.responses.create(
        input=question, tools=[MULTIPLY], tool_choice="required", parallel_tool_calls=False, **kw
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and first.status == "completed", first.output
    call = calls[0]
    assert call.name == "multiply" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), MULTIPLY["parameters"])
    follow_up = [
        *question,
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
    ]
    second = client.responses.create(input=follow_up, tools=[MULTIPLY], tool_choice="none", **kw)
    assert second.output[0].type == "message" and second.output_text
    assert '"tool_calls"' not in second.output_text and '"response"' not in second.output_text


def test_max_output_tokens_cuts_the_answer_as_incomplete(target: Server) -> None:
    client = sdk(target)
    kw: dict[str, Any] = {
        "model": MODEL,
        "input": "Write a long story about a dragon who learns to bake bread.",
        "max_output_tokens": 16,
        "temperature": 0,
    }
    r = client.responses.create(**kw)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 16
    events = list(client.responses.create(stream=True, **kw))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        # Found by the chat path (the tool name's pattern), named as the Responses field.
        ({"tools": [{"type": "function", "name": "bad name!", "parameters": {}}]}, "tools[0].name"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_token": 5}, "max_output_token"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    target: Server, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(
        f"{target.url}/v1/responses",
        json={"model": MODEL, "input": "hi", **body},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


# -- the model server alone ------------------------------------------------------------------


def test_instructions_and_items_with_parts(server: Server) -> None:
    r = sdk(server).responses.create(
        model=MODEL,
        instructions="You answer in one short sentence.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello Ada!", "annotations": []}],
            },
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=24,
        temperature=0,
    )
    assert r.instructions == "You answer in one short sentence."
    assert r.output_text


def test_named_tool_streams_its_call_events(server: Server) -> None:
    events = list(
        sdk(server).responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=[MULTIPLY, WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=60,
            stream=True,
        )
    )
    types = collapse([e.type for e in events])
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.name == "get_weather"
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])
    [item] = events[-1].response.output
    assert item.type == "function_call" and item.arguments == done.arguments


def test_output_text_logprobs_when_included(server: Server) -> None:
    r = sdk(server).responses.create(
        model=MODEL,
        input="Say hi.",
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        max_output_tokens=16,
        temperature=0,
    )
    logprobs = r.output[0].content[0].logprobs
    assert logprobs and r.usage is not None and len(logprobs) == r.usage.output_tokens
    assert "".join(lp.token for lp in logprobs) == r.output_text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)


def test_context_overflow_names_max_output_tokens(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 10**6},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens", r.text


def aborted(server: Server) -> float:
    """vllm:request_success_total{finished_reason="abort"} of the model server."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no abort counter in /metrics")


def test_a_client_leaving_a_stream_stops_its_generation(server: Server) -> None:
    before = aborted(server)
    body = {
        "model": MODEL,
        "input": "Write a long story about a dragon who learns to bake bread.",
        "max_output_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line == "event: response.output_text.delta":
                break  # leaving the block closes the connection mid-answer
    deadline = time.monotonic() + 20
    while aborted(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborted(server) == before + 1


def test_unknown_model_is_a_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(server).responses.create(model="nope", input="hi")
    assert caught.value.body["param"] == "model"


# -- through the agent -----------------------------------------------------------------------


def test_agent_response_carries_the_sources(agent: Server) -> None:
    raw = sdk(agent).responses.with_raw_response.create(
        model=MODEL, input=QUESTION, max_output_tokens=24
    )
    assert raw.headers["x-archon-rag"] == "used"
    r = raw.parse()
    assert r.output_text
    sources = r.model_extra["sources"]
    assert "docs/querying/functions.md" in {s["path"] for s in sources}


def test_agent_stream_puts_the_sources_on_the_completed_response(agent: Server) -> None:
    events = list(
        sdk(agent).responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, stream=True)
    )
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    sources = final.response.model_extra["sources"]
    assert "docs/querying/functions.md" in {s["path"] for s in sources}


def test_agent_options_ride_along(agent: Server) -> None:
    raw = sdk(agent).responses.with_raw_response.create(
        model=MODEL, input=QUESTION, max_output_tokens=8, extra_body={"archon": {"rag": False}}
    )
    assert raw.headers["x-archon-rag"] == "off"
    assert "sources" not in (raw.parse().model_extra or {})
