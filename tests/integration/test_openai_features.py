"""The rest of the OpenAI API on the CPU engine, through the openai SDK against `archon serve`:
penalties, logit_bias, structured output, tools, logprobs, n, prompt lists, echo, tokenize."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.support.servers import MODEL, Server

REPEAT = "the cat the cat the cat the cat the cat the cat"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _tokens(server: Server, text: str) -> list[int]:
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": text, "add_special_tokens": False})
    return r.json()["tokens"]


def _repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


def _complete(client: openai.OpenAI, **kw) -> str:
    kw.setdefault("max_tokens", 48)
    kw.setdefault("temperature", 0)
    return client.completions.create(model=MODEL, prompt=REPEAT, **kw).choices[0].text


@pytest.mark.parametrize(
    "penalty",
    [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 1.8}},
    ],
    ids=["frequency", "presence", "repetition"],
)
def test_penalties_reduce_repeated_tokens(
    client: openai.OpenAI, server: Server, penalty: dict
) -> None:
    plain = _tokens(server, _complete(client))
    penalised = _tokens(server, _complete(client, **penalty))
    assert _repeats(plain) > 0.5 * len(plain)  # greedy on this prompt loops
    assert _repeats(penalised) < _repeats(plain) * 0.7, (plain, penalised)
    assert httpx.get(f"{server.url}/health").status_code == 200  # and the engine lives


def test_negative_penalties_are_served(client: openai.OpenAI) -> None:
    assert _complete(client, frequency_penalty=-2.0, presence_penalty=-2.0, max_tokens=8)


def test_logit_bias_minus_100_keeps_a_token_out(client: openai.OpenAI, server: Server) -> None:
    plain = client.completions.create(
        model=MODEL, prompt=REPEAT, max_tokens=24, temperature=0, logprobs=0
    )
    tokens = plain.choices[0].logprobs.tokens
    banned = max(set(tokens), key=tokens.count)  # the token greedy repeats most
    (banned_id,) = _tokens(server, banned)
    biased = client.completions.create(
        model=MODEL,
        prompt=REPEAT,
        max_tokens=24,
        temperature=0,
        logprobs=0,
        logit_bias={str(banned_id): -100},
    )
    assert banned not in biased.choices[0].logprobs.tokens
    # A positive bias of 100 makes a token (almost) certain.
    (forced,) = _tokens(server, " banana")
    out = client.completions.create(
        model=MODEL, prompt="x", max_tokens=4, temperature=0, logit_bias={str(forced): 100}
    )
    assert out.choices[0].text == " banana" * 4


class Person(BaseModel):
    name: str
    age: int


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person. Give their name and age."}],
        response_format=Person,
        temperature=0,
        max_tokens=60,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person.name


def test_json_schema_streamed_is_valid_json(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "service": {"type": "string", "enum": ["agent", "kb", "model-server"]},
            "replicas": {"type": "integer", "minimum": 1},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "maxItems": 3,
            },
        },
        "required": ["service", "replicas", "tags"],
        "additionalProperties": False,
    }
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a deployment as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "deployment", "schema": schema, "strict": True},
        },
        temperature=0.8,
        seed=11,
        max_tokens=120,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_json_object_answers_with_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply in JSON: what is Kubernetes?"}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=60,
    )
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # cut off by max_tokens: still an object's beginning
        assert choice.message.content.lstrip().startswith("{")


def _check_call(call, tools: list[dict]) -> dict:
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema[call.function.name])
    return arguments


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    kw = {"model": MODEL, "tools": tools, "temperature": 0, "max_tokens": 80}
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(
            messages=ASK, tool_choice="required", stream=True, **kw
        ):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for d in c.delta.tool_calls or []:
                    entry = calls.setdefault(d.index, {"id": d.id, "name": "", "args": ""})
                    entry["name"] += d.function.name or ""
                    entry["args"] += d.function.arguments or ""
        assert finish == "tool_calls" and calls
        first = calls[0]
        call = openai.types.chat.ChatCompletionMessageToolCall(
            id=first["id"],
            type="function",
            function={"name": first["name"], "arguments": first["args"]},
        )
    else:
        reply = client.chat.completions.create(messages=ASK, tool_choice="required", **kw)
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.content is None
        call = reply.choices[0].message.tool_calls[0]
    _check_call(call, tools)

    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(messages=follow_up, tool_choice="none", **kw)
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls
    # With tool_choice auto the model may call again or answer; either way a valid shape.
    again = client.chat.completions.create(messages=follow_up, tool_choice="auto", **kw)
    message = again.choices[0].message
    if message.tool_calls:
        assert again.choices[0].finish_reason == "tool_calls"
        for c in message.tool_calls:
            _check_call(c, tools)
    else:
        assert message.content is not None


def test_named_tool_choice_and_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    )
    calls = reply.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    _check_call(calls[0], [TIME_TOOL])


def test_chat_logprobs_come_from_the_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        temperature=0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.logprob == pytest.approx(tops[0])  # greedy takes the most likely token
        assert sum(math.exp(t) for t in tops) <= 1.0 + 1e-6
        assert bytes(e.bytes).decode() == e.token


def test_streamed_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five"}],
        temperature=0,
        max_tokens=10,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, entries, usage = "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                entries.extend(c.logprobs.content)
    assert len(entries) == usage.completion_tokens
    assert "".join(e.token for e in entries) == text


def test_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour"}],
        n=2,
        seed=5,
        temperature=1.0,
        max_tokens=8,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    lengths = reply.usage.completion_tokens
    assert lengths <= 16 and lengths >= 2


def test_prompt_list_with_n_echo_and_logprobs(client: openai.OpenAI) -> None:
    prompts = ["Kubernetes is", "Prometheus scrapes"]
    reply = client.completions.create(
        model=MODEL, prompt=prompts, n=2, echo=True, max_tokens=4, temperature=0, logprobs=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for c in reply.choices:
        prompt = prompts[c.index // 2]
        assert c.text.startswith(prompt)
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
        # With echo the columns start with the prompt's tokens (the first has no logprob).
        assert lp.text_offset[0] == 0 and lp.token_logprobs[0] is None
        assert c.text == "".join(lp.tokens)
    assert reply.choices[0].text == reply.choices[1].text  # greedy: same continuation


def test_streamed_prompt_list(client: openai.OpenAI) -> None:
    texts: dict[int, str] = {}
    for chunk in client.completions.create(
        model=MODEL, prompt=["One,", "Alpha,"], max_tokens=5, temperature=0, stream=True
    ):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert sorted(texts) == [0, 1] and all(texts.values())


def test_tokenize_and_detokenize(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/tokenize",
        json={"model": MODEL, "prompt": "archon kb sync", "return_token_strs": True},
    ).json()
    assert r["count"] == len(r["tokens"]) and "".join(r["token_strs"]) == "archon kb sync"
    assert r["max_model_len"] == 2048
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back["prompt"] == "archon kb sync"
    chat = httpx.post(
        f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}
    ).json()
    assert chat["count"] > 5  # the template's own tokens
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    wrong = httpx.post(f"{server.url}/tokenize", json={"model": "gpt-4", "prompt": "x"})
    assert wrong.status_code == 404
