"""The agent's generation defaults end to end: what reaches a stand-in model server (the exact
body), and what the real one (bundled SmolLM2) does with every field the agent sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from archon.agent.auth import hash_key
from tests.support.fake_upstream import FAKE_MODEL, FakeUpstream
from tests.support.servers import MODEL, Server
from tests.support.stack import (
    querying_docs_sources,
    running_agent,
    start_agent,
    start_kb,
    wait_agent_ready,
)

pytestmark = pytest.mark.slow

EVERY_FIELD = {
    "temperature": 0.0,
    "top_p": 0.9,
    "frequency_penalty": 0.2,
    "presence_penalty": 0.1,
    "repetition_penalty": 1.3,
    "max_tokens": 12,
    "max_tokens_cap": 20,
}
SENT = {k: v for k, v in EVERY_FIELD.items() if k != "max_tokens_cap"}
LONG = "Write a long story about a dragon who learns to cook."


def sdk(agent: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=agent.url + "/v1", api_key=key, max_retries=0, timeout=300)


def test_the_stand_in_gets_the_defaults_the_requests_own_values_and_the_keys_caps(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "capped", "key": hash_key("sk-capped"), "max_tokens": 8},
                    {"name": "own", "key": hash_key("sk-own"), "default_max_tokens": 3},
                    {"name": "plain", "key": hash_key("sk-plain")},
                ]
            }
        )
    )
    generation = {"default": EVERY_FIELD, "models": {"fake-*": {"temperature": 0.4}}}
    agent = start_agent(
        tmp_path,
        [fake.url],
        None,
        env={
            "ARCHON_AGENT_GENERATION": json.dumps(generation),
            "ARCHON_AGENT_API_KEYS_FILE": str(keys),
        },
    )
    try:
        wait_agent_ready(agent)
        hi = [{"role": "user", "content": "Hi"}]
        plain = sdk(agent, "sk-plain")
        plain.chat.completions.create(model=FAKE_MODEL, messages=hi)
        assert {k: fake.bodies[-1].get(k) for k in SENT} == {**SENT, "temperature": 0.4}

        plain.chat.completions.create(
            model=FAKE_MODEL, messages=hi, temperature=1.0, top_p=1.0, max_tokens=5
        )
        body = fake.bodies[-1]
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 1.0, 5)
        assert body["repetition_penalty"] == 1.3  # what the request left out is still filled

        answer = plain.chat.completions.create(model=FAKE_MODEL, messages=hi, max_tokens=500)
        assert fake.bodies[-1]["max_tokens"] == 20  # lowered to the cap, not refused
        assert answer.usage is not None and answer.usage.completion_tokens == 20

        # JSON and tool arguments copy from the prompt: no penalties (docs/benchmarks.md,
        # "Copying"); temperature, top_p, the length default and the cap still apply. A
        # completion gets no sampling defaults and keeps the model server's default length.
        penalties = {"frequency_penalty", "presence_penalty", "repetition_penalty"}
        schema = {"name": "x", "schema": {"type": "object"}}
        plain.chat.completions.create(
            model=FAKE_MODEL,
            messages=hi,
            response_format={"type": "json_schema", "json_schema": schema},
        )
        body = fake.bodies[-1]
        assert not penalties & set(body)
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.4, 0.9, 12)
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        plain.chat.completions.create(
            model=FAKE_MODEL, messages=hi, tools=[tool], tool_choice="required", temperature=0.5
        )
        assert not penalties & set(fake.bodies[-1])
        assert fake.bodies[-1]["temperature"] == 0.5  # the request's own, as always
        plain.chat.completions.create(
            model=FAKE_MODEL, messages=hi, tools=[tool], tool_choice="none"
        )
        assert fake.bodies[-1]["repetition_penalty"] == 1.3  # no tool call: a plain answer
        plain.completions.create(model=FAKE_MODEL, prompt="Hi", max_tokens=500)
        assert not {*penalties, "temperature", "top_p"} & set(fake.bodies[-1])
        assert fake.bodies[-1]["max_tokens"] == 20  # the cap
        plain.completions.create(model=FAKE_MODEL, prompt="Hi")
        assert "max_tokens" not in fake.bodies[-1]  # the model server's default (OpenAI's 16)

        # A key's cap bounds the agent's default (12 would be refused above the key's 8)...
        sdk(agent, "sk-capped").chat.completions.create(model=FAKE_MODEL, messages=hi)
        assert fake.bodies[-1]["max_tokens"] == 8
        # ...and a key's own default wins over the agent's.
        sdk(agent, "sk-own").chat.completions.create(model=FAKE_MODEL, messages=hi)
        assert fake.bodies[-1]["max_tokens"] == 3
        with pytest.raises(openai.BadRequestError) as err:
            sdk(agent, "sk-capped").chat.completions.create(
                model=FAKE_MODEL, messages=hi, max_tokens=15
            )
        assert err.value.body["code"] == "max_tokens_above_limit"  # the key's cap still rules
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("generation")
    env = {"ARCHON_AGENT_GENERATION": json.dumps({"default": EVERY_FIELD})}
    with running_agent(tmp, [server.url], None, env) as agent:
        yield agent


def test_the_real_model_server_takes_every_field_and_the_answer_stops_at_the_default(
    agent: Server,
) -> None:
    client = sdk(agent)
    messages = [{"role": "user", "content": LONG}]
    first = client.chat.completions.create(model=MODEL, messages=messages)
    second = client.chat.completions.create(model=MODEL, messages=messages)
    assert first.usage is not None and first.usage.completion_tokens == 12
    assert first.choices[0].finish_reason == "length"
    # temperature 0 from the agent: greedy, so the same answer twice (the model server's
    # default temperature is 1)
    assert first.choices[0].message.content == second.choices[0].message.content

    capped = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=400)
    assert capped.usage is not None and capped.usage.completion_tokens == 20
    # the same greedy answer, longer: the cap, not a different request, ended it
    assert (capped.choices[0].message.content or "").startswith(
        first.choices[0].message.content or "\x00"
    )

    # The agent's penalties reach the engine: without them the greedy answer differs.
    unpenalised = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=20,
        extra_body={"repetition_penalty": 1.0, "frequency_penalty": 0, "presence_penalty": 0},
    )
    assert unpenalised.choices[0].message.content != capped.choices[0].message.content


def test_a_stream_stops_at_the_default_too(agent: Server) -> None:
    chunks = list(
        sdk(agent).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": LONG}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_a_quoted_answer_gets_the_shorter_default_and_starts_with_the_quote(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Through a real knowledge base (the Prometheus querying docs) to the stand-in: the body
    the model server gets, and what the client reads."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "own", "key": hash_key("sk-own"), "default_max_tokens": 3},
                    {"name": "plain", "key": hash_key("sk-plain")},
                ]
            }
        )
    )
    generation = {
        "models": {"fake-*": {"lead_quote": True, "max_tokens": 50, "quoted_max_tokens": 6}}
    }
    kb = start_kb(tmp_path, querying_docs_sources(tmp_path))
    try:
        env = {
            "ARCHON_AGENT_GENERATION": json.dumps(generation),
            "ARCHON_AGENT_API_KEYS_FILE": str(keys),
        }
        with running_agent(tmp_path, [fake.url], kb.url, env) as agent:
            client = sdk(agent, "sk-plain")
            ask = [{"role": "user", "content": "How does rate() compute a per-second rate?"}]
            answer = client.chat.completions.create(model=FAKE_MODEL, messages=ask)
            assert fake.bodies[-1]["max_tokens"] == 6  # quoted: the shorter default
            assert "lead_quote" not in fake.bodies[-1]
            assert fake.bodies[-1]["stop"] == ["] prometheus: ", "] Prometheus: "]  # an echo
            text = answer.choices[0].message.content or ""
            assert text.startswith("From [") and "docs/querying/" in text.split("\n")[0]
            stream = client.chat.completions.create(model=FAKE_MODEL, messages=ask, stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert streamed.split("\n\n")[:2] == text.split("\n\n")[:2]

            client.chat.completions.create(
                model=FAKE_MODEL, messages=ask, max_tokens=40, stop=["\n\n"]
            )
            assert fake.bodies[-1]["max_tokens"] == 40  # the request's own length wins
            assert fake.bodies[-1]["stop"] == ["\n\n"]  # and its own stop
            client.chat.completions.create(
                model=FAKE_MODEL, messages=ask, extra_body={"ignore_eos": True}
            )
            assert "stop" not in fake.bodies[-1]  # every token asked for: no stop of ours
            off = client.chat.completions.create(
                model=FAKE_MODEL, messages=ask, extra_body={"archon": {"rag": False}}
            )
            assert fake.bodies[-1]["max_tokens"] == 50  # no quote: the model's default
            assert "stop" not in fake.bodies[-1]  # no excerpts, no header to echo
            assert not (off.choices[0].message.content or "").startswith("From [")
            sdk(agent, "sk-own").chat.completions.create(model=FAKE_MODEL, messages=ask)
            assert fake.bodies[-1]["max_tokens"] == 3  # a key's own default wins
    finally:
        kb.stop()
