"""The openai SDK (the client every other library wraps) against Archon, call by call."""

from __future__ import annotations

import json

import openai
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
from pydantic import BaseModel, Field

driver = Driver("openai")


def client(o: Options) -> openai.OpenAI:
    return openai.OpenAI(base_url=o.base_url, api_key="sk-none", max_retries=0, timeout=180)


def tools() -> list:
    return [openai.pydantic_function_tool(Person, name="record_person")]


NAMED = {"type": "function", "function": {"name": "record_person"}}


@driver.case("chat")
def chat(o: Options) -> None:
    r = client(o).chat.completions.create(
        model=o.model,
        messages=[{"role": "user", "content": SMALL_TALK}],
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    clean(r.choices[0].message.content)
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason


@driver.case("stream")
def stream(o: Options) -> None:
    chunks = list(
        client(o).chat.completions.create(
            model=o.model,
            messages=[{"role": "user", "content": SMALL_TALK}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    clean(text)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"]), finishes
    assert chunks[-1].usage is not None and not chunks[-1].choices, "no usage chunk last"


@driver.case("completions")
def completions(o: Options) -> None:
    r = client(o).completions.create(
        model=o.model, prompt="The capital of France is", max_tokens=16, temperature=0
    )
    clean(r.choices[0].text)


def tool_call(o: Options, tool_choice, max_tokens: int = STRUCTURED_MAX_TOKENS):
    return client(o).chat.completions.create(
        model=o.model,
        messages=[{"role": "user", "content": EXTRACT}],
        tools=tools(),
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=max_tokens,
    )


@driver.case("tools_named")
def tools_named(o: Options) -> None:
    r = tool_call(o, NAMED)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason
    assert m.tool_calls and m.tool_calls[0].function.name == "record_person", m
    person(m.tool_calls[0].function.arguments)
    if m.content:
        clean(m.content)


@driver.case("tools_required")
def tools_required(o: Options) -> None:
    r = tool_call(o, "required")
    m = r.choices[0].message
    assert m.tool_calls, m
    person(m.tool_calls[0].function.arguments)
    if m.content:
        clean(m.content)


@driver.case("tools_cut_by_max_tokens")
def tools_cut(o: Options) -> None:
    # An answer cut short: finish_reason "length" and none of the internal format in content.
    for choice in ("required", "auto"):
        r = tool_call(o, choice, max_tokens=6)
        c = r.choices[0]
        assert c.finish_reason == "length", (choice, c.finish_reason, c.message)
        if c.message.content:
            clean(c.message.content, allow_empty=True)


@driver.case("tools_stream")
def tools_stream(o: Options) -> None:
    calls = streamed_tool_calls(o)
    assert calls and all(name == "record_person" for name, _ in calls), calls
    for _, deltas in calls:
        person("".join(deltas))


@driver.case("tools_stream_incremental")
def tools_stream_incremental(o: Options) -> None:
    # Arguments streamed as they are generated (as vLLM and OpenAI do), not in one delta at the end.
    calls = streamed_tool_calls(o)
    assert calls and len(calls[0][1]) > 1, f"the arguments came in {len(calls[0][1])} delta(s)"


STREAMED: dict[str, list[tuple[str, list[str]]]] = {}


def streamed_tool_calls(o: Options) -> list[tuple[str, list[str]]]:
    """Each streamed call's name (sent once, in its first delta) and its argument deltas."""
    if o.base_url in STREAMED:
        return STREAMED[o.base_url]
    chunks = client(o).chat.completions.create(
        model=o.model,
        messages=[{"role": "user", "content": EXTRACT}],
        tools=tools(),
        tool_choice=NAMED,
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
        stream=True,
    )
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            clean(delta.content)
        for tc in delta.tool_calls or []:
            if tc.function and tc.function.name:
                assert tc.index not in names, f"call {tc.index}'s name sent twice"
                names[tc.index] = tc.function.name
            if tc.function and tc.function.arguments:
                args.setdefault(tc.index, []).append(tc.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls", finish
    STREAMED[o.base_url] = [(names.get(i, ""), args.get(i, [])) for i in sorted(names)]
    return STREAMED[o.base_url]


@driver.case("structured_parse")
def structured_parse(o: Options) -> None:
    r = client(o).chat.completions.parse(
        model=o.model,
        messages=[{"role": "user", "content": EXTRACT}],
        response_format=Person,
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
    )
    clean(r.choices[0].message.content)
    assert isinstance(r.choices[0].message.parsed, Person), r.choices[0].message


@driver.case("json_object")
def json_object(o: Options) -> None:
    r = client(o).chat.completions.create(
        model=o.model,
        messages=[{"role": "user", "content": EXTRACT + " Answer in JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
    )
    assert isinstance(json.loads(clean(r.choices[0].message.content)), dict)


# A question the knowledge base of Archon's docs answers: through the agent, retrieval adds
# excerpts (x-archon-rag: used), and the answer must still be only what was asked for.
DOCS_QUESTION = "How do I roll back a model update? Answer in one sentence."


class DocAnswer(BaseModel):
    answer: str = Field(max_length=200)


def retrieval_used(o: Options, headers) -> None:
    if o.target == "agent":
        rag = headers.get("x-archon-rag")
        assert rag == "used", f"retrieval not used (x-archon-rag: {rag}): the case tests nothing"


@driver.case("structured_parse_with_retrieval")
def structured_with_retrieval(o: Options) -> None:
    raw = client(o).chat.completions.with_raw_response.parse(
        model=o.model,
        messages=[{"role": "user", "content": DOCS_QUESTION}],
        response_format=DocAnswer,
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
    )
    retrieval_used(o, raw.headers)
    message = raw.parse().choices[0].message
    clean(message.content)
    assert isinstance(message.parsed, DocAnswer), message


@driver.case("tools_named_with_retrieval")
def tools_with_retrieval(o: Options) -> None:
    raw = client(o).chat.completions.with_raw_response.create(
        model=o.model,
        messages=[{"role": "user", "content": DOCS_QUESTION}],
        tools=[openai.pydantic_function_tool(DocAnswer, name="answer_user")],
        tool_choice={"type": "function", "function": {"name": "answer_user"}},
        # One call: given excerpts, the bundled model repeats the call until max_tokens.
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
    )
    retrieval_used(o, raw.headers)
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls, choice.message
    DocAnswer.model_validate_json(choice.message.tool_calls[0].function.arguments)
    if choice.message.content:
        clean(choice.message.content)


@driver.case("embeddings")
def embeddings(o: Options) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it.
    r = client(o).embeddings.create(model=o.embedding_model, input=["hello", "a longer text"])
    vectors([d.embedding for d in r.data], 2)
    assert [d.index for d in r.data] == [0, 1]


@driver.case("embeddings_float")
def embeddings_float(o: Options) -> None:
    r = client(o).embeddings.create(model=o.embedding_model, input="hello", encoding_format="float")
    vectors([d.embedding for d in r.data], 1)


@driver.case("responses")
def responses(o: Options) -> None:
    r = client(o).responses.create(
        model=o.model,
        input=SMALL_TALK,
        instructions="Answer briefly.",
        max_output_tokens=MAX_TOKENS,
        temperature=0,
        store=False,
    )
    clean(r.output_text)
    assert r.status in ("completed", "incomplete"), r.status


@driver.case("responses_stream")
def responses_stream(o: Options) -> None:
    events = list(
        client(o).responses.create(
            model=o.model,
            input=[{"role": "user", "content": SMALL_TALK}],
            max_output_tokens=MAX_TOKENS,
            temperature=0,
            store=False,
            stream=True,
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created", types[:3]
    assert types[-1] in ("response.completed", "response.incomplete"), types[-3:]
    assert "response.output_text.delta" in types, types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    clean(text)
    assert text == events[-1].response.output_text, (text, events[-1].response.output_text)


@driver.case("responses_structured")
def responses_structured(o: Options) -> None:
    r = client(o).responses.parse(
        model=o.model,
        input=EXTRACT,
        text_format=Person,
        max_output_tokens=STRUCTURED_MAX_TOKENS,
        temperature=0,
        store=False,
    )
    assert isinstance(r.output_parsed, Person), r.output_text


@driver.case("responses_tools")
def responses_tools(o: Options) -> None:
    schema = openai.pydantic_function_tool(Person, name="record_person")["function"]
    tool = {"type": "function", "name": "record_person", "parameters": schema["parameters"]}
    tool["strict"] = True
    c = client(o)
    r = c.responses.create(
        model=o.model,
        input=EXTRACT,
        tools=[tool],
        tool_choice="required",
        max_output_tokens=STRUCTURED_MAX_TOKENS,
        temperature=0,
        store=False,
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and calls[0].name == "record_person", r.output
    person(calls[0].arguments)
    # The tool's output sent back: a text answer.
    r2 = c.responses.create(
        model=o.model,
        input=[
            {"role": "user", "content": EXTRACT},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": calls[0].name,
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "saved"},
        ],
        tools=[tool],
        max_output_tokens=MAX_TOKENS,
        temperature=0,
        store=False,
    )
    texts = [item for item in r2.output if item.type == "message"]
    if texts:
        clean(r2.output_text)
    else:
        person(next(i for i in r2.output if i.type == "function_call").arguments)


if __name__ == "__main__":
    driver.main()
