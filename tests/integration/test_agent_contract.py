"""The agent keeps the OpenAI contract: a real model server (bundled SmolLM2), a real knowledge
base over the Prometheus querying docs and the agent in between, with the `openai` SDK as the
client. Structured output, tool calls, logprobs and several choices come back as the model
server made them (at most ``sources`` added); only a plain-text answer about the docs gets
the lead quote; a stream and a whole answer are shaped alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.support.servers import MODEL, Server
from tests.support.stack import querying_docs_sources, running_agent, start_kb

pytestmark = pytest.mark.slow

AGENT_ENV = {"ARCHON_AGENT_MAX_CONTEXT_CHARS": "2500"}
ABOUT_THE_DOCS = "How does the rate() function compute the per-second average rate of a counter?"
LEAD = "From ["


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("contract")
    kb = start_kb(tmp, querying_docs_sources(tmp))
    try:
        with running_agent(tmp, [server.url], kb.url, AGENT_ENV) as agent:
            yield agent
    finally:
        kb.stop()


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


class Rate(BaseModel):
    function: str
    window_seconds: int


def test_parse_with_a_pydantic_model_through_the_agent(agent: Server) -> None:
    raw = sdk(agent.url).chat.completions.with_raw_response.parse(
        model=MODEL,
        messages=ask(ABOUT_THE_DOCS),
        response_format=Rate,
        temperature=0,
        max_tokens=40,
    )
    assert raw.headers["x-archon-rag"] == "used"  # retrieval ran, context went in
    completion = raw.parse()
    message = completion.choices[0].message
    assert not (message.content or "").startswith(LEAD)
    assert isinstance(message.parsed, Rate), message.content
    assert completion.model_extra["sources"]  # listed: an extra field the SDK keeps


def test_json_object_and_a_json_schema_stream_parse(agent: Server) -> None:
    client = sdk(agent.url)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            *ask(ABOUT_THE_DOCS),
        ],
        "temperature": 0,
        "max_tokens": 40,
    }
    whole = client.chat.completions.create(response_format={"type": "json_object"}, **body)
    content = whole.choices[0].message.content or ""
    assert not content.startswith(LEAD)
    if whole.choices[0].finish_reason == "stop":
        json.loads(content)
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "rate", "schema": Rate.model_json_schema(), "strict": True},
    }
    answer = client.chat.completions.create(response_format=schema, **body)
    chunks = list(client.chat.completions.create(response_format=schema, stream=True, **body))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content  # temperature 0: the same answer
    Rate.model_validate_json(streamed)
    assert chunks[-1].model_extra["sources"]


PROMQL_TOOL = {
    "type": "function",
    "function": {
        "name": "run_promql",
        "description": "Run a PromQL query against the cluster's Prometheus",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
        },
    },
}


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "run_promql"}}]
)
def test_tool_calls_come_through_without_words_added(agent: Server, tool_choice: Any) -> None:
    client = sdk(agent.url)
    body = {
        "model": MODEL,
        "messages": ask("Show the per-second rate of http_requests_total over 5 minutes."),
        "tools": [PROMQL_TOOL],
        "tool_choice": tool_choice,
        "temperature": 0,
        "max_tokens": 60,
    }
    completion = client.chat.completions.create(**body)
    message = completion.choices[0].message
    assert message.tool_calls, message.content
    assert not message.content  # no lead quote, no wrapper
    json.loads(message.tool_calls[0].function.arguments)
    chunks = list(client.chat.completions.create(stream=True, **body))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_logprobs_and_several_choices_are_the_model_servers(agent: Server) -> None:
    client = sdk(agent.url)
    with_logprobs = client.chat.completions.create(
        model=MODEL, messages=ask(ABOUT_THE_DOCS), logprobs=True, max_tokens=8, temperature=0
    )
    choice = with_logprobs.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    several = client.chat.completions.create(
        model=MODEL, messages=ask(ABOUT_THE_DOCS), n=2, max_tokens=8
    )
    assert len(several.choices) == 2
    assert not any((c.message.content or "").startswith(LEAD) for c in several.choices)


def test_no_penalty_on_a_structured_request(agent: Server, server: Server) -> None:
    """Through the agent (retrieval off) and straight to the model server, at temperature 0:
    the same extraction, so the agent added no repetition penalty (it once turned "Alice is 31
    years old." into {"name": "Ava", "age": 25})."""
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
        },
    }
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": ask("Alice is 31 years old."),
        "response_format": schema,
        "temperature": 0,
        "max_tokens": 30,
    }
    direct = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300).json()
    through = httpx.post(
        agent.url + "/v1/chat/completions",
        json={**body, "archon": {"rag": False}},
        timeout=300,
    ).json()
    assert through["choices"][0]["message"] == direct["choices"][0]["message"]
    assert "sources" not in through  # retrieval off: nothing added at all


def test_small_talk_gets_no_quote(agent: Server) -> None:
    for question in ("Say hi.", "Thanks!"):
        raw = sdk(agent.url).chat.completions.with_raw_response.create(
            model=MODEL, messages=ask(question), max_tokens=16
        )
        assert raw.headers["x-archon-rag"] == "none", question
        completion = raw.parse()
        assert not (completion.choices[0].message.content or "").startswith(LEAD)
        assert completion.model_extra["sources"] == []


def test_a_stream_and_a_whole_answer_are_shaped_alike(agent: Server) -> None:
    client = sdk(agent.url)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": ask(ABOUT_THE_DOCS),
        "temperature": 0,
        "max_tokens": 8,
    }
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(stream=True, **body))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (whole.choices[0].message.content or "").startswith(LEAD)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].model_extra["sources"] == whole.model_extra["sources"]
