"""LiteLLM's SDK (an `openai/` model with api_base) against Archon."""

from __future__ import annotations

import json
import os

# The model cost map from the package, not from GitHub (no internet in tests).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from common import (
    EXTRACT,
    MAX_TOKENS,
    SMALL_TALK,
    STRUCTURED_MAX_TOKENS,
    Driver,
    Options,
    Person,
    clean,
    person,
    vectors,
)

driver = Driver("litellm")
litellm.telemetry = False


def call(o: Options, **kw):
    return {"api_base": o.base_url, "api_key": "sk-none", "timeout": 180, "num_retries": 0, **kw}


@driver.case("chat")
def chat(o: Options) -> None:
    r = litellm.completion(
        **call(o, model="openai/" + o.model, temperature=0, max_tokens=MAX_TOKENS),
        messages=[{"role": "user", "content": SMALL_TALK}],
    )
    clean(r.choices[0].message.content)


@driver.case("stream")
def stream(o: Options) -> None:
    chunks = litellm.completion(
        **call(o, model="openai/" + o.model, temperature=0, max_tokens=MAX_TOKENS, stream=True),
        messages=[{"role": "user", "content": SMALL_TALK}],
    )
    clean("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


@driver.case("tools_named")
def tools_named(o: Options) -> None:
    tool = {
        "type": "function",
        "function": {"name": "record_person", "parameters": Person.model_json_schema()},
    }
    r = litellm.completion(
        **call(o, model="openai/" + o.model, temperature=0, max_tokens=STRUCTURED_MAX_TOKENS),
        messages=[{"role": "user", "content": EXTRACT}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "record_person"}},
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "record_person", r.choices[0].message
    person(calls[0].function.arguments)


@driver.case("structured_response_format")
def structured(o: Options) -> None:
    r = litellm.completion(
        **call(o, model="openai/" + o.model, temperature=0, max_tokens=STRUCTURED_MAX_TOKENS),
        messages=[{"role": "user", "content": EXTRACT}],
        response_format=Person,
    )
    person(r.choices[0].message.content)


@driver.case("json_object")
def json_object(o: Options) -> None:
    r = litellm.completion(
        **call(o, model="openai/" + o.model, temperature=0, max_tokens=STRUCTURED_MAX_TOKENS),
        messages=[{"role": "user", "content": EXTRACT + " Answer in JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(clean(r.choices[0].message.content)), dict)


@driver.case("embeddings")
def embeddings(o: Options) -> None:
    r = litellm.embedding(
        **call(o, model="openai/" + o.embedding_model), input=["hello", "a longer text"]
    )
    vectors([d["embedding"] for d in r.data], 2)


@driver.case("responses")
def responses(o: Options) -> None:
    r = litellm.responses(
        **call(o, model="openai/" + o.model, temperature=0, max_output_tokens=MAX_TOKENS),
        input=SMALL_TALK,
    )
    texts = [
        part.text
        for item in r.output
        if getattr(item, "type", None) == "message"
        for part in item.content
        if getattr(part, "type", None) == "output_text"
    ]
    assert texts, r.output
    clean("".join(texts))


if __name__ == "__main__":
    driver.main()
