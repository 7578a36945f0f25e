"""The OpenAI Agents SDK against Archon: its Chat Completions model and its default (Responses)."""

from __future__ import annotations

import asyncio

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
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
)
from openai import AsyncOpenAI

driver = Driver("openai-agents")
set_tracing_disabled(True)  # no export to OpenAI's servers


def client(o: Options) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=o.base_url, api_key="sk-none", max_retries=0, timeout=180)


def model(o: Options, api: str):
    if api == "chat":
        return OpenAIChatCompletionsModel(model=o.model, openai_client=client(o))
    # The SDK's default: a model name, served by the Responses API through the default client.
    set_default_openai_client(client(o), use_for_tracing=False)
    return o.model


RECORDED: list[Person] = []


@function_tool
def record_person(person: Person) -> str:
    """Record a person mentioned in the text."""
    RECORDED.append(person)
    return "recorded"


def text_agent(o: Options, api: str) -> Agent:
    settings = ModelSettings(temperature=0, max_tokens=MAX_TOKENS)
    return Agent(
        name="hi", instructions="Answer briefly.", model=model(o, api), model_settings=settings
    )


def run_text(o: Options, api: str) -> None:
    clean(Runner.run_sync(text_agent(o, api), SMALL_TALK, max_turns=1).final_output)


def run_stream(o: Options, api: str) -> None:
    async def go() -> str:
        result = Runner.run_streamed(text_agent(o, api), SMALL_TALK, max_turns=1)
        async for _ in result.stream_events():
            pass
        return result.final_output

    clean(asyncio.run(go()))


def run_output_type(o: Options, api: str) -> None:
    agent = Agent(
        name="extract",
        instructions="Extract the person.",
        model=model(o, api),
        output_type=Person,
        model_settings=ModelSettings(temperature=0, max_tokens=STRUCTURED_MAX_TOKENS),
    )
    out = Runner.run_sync(agent, EXTRACT, max_turns=1).final_output
    assert isinstance(out, Person), out


def run_tools(o: Options, api: str) -> None:
    RECORDED.clear()
    agent = Agent(
        name="record",
        instructions="Record the person.",
        model=model(o, api),
        tools=[record_person],
        tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(
            temperature=0, max_tokens=STRUCTURED_MAX_TOKENS, tool_choice="required"
        ),
    )
    out = Runner.run_sync(agent, EXTRACT, max_turns=2).final_output
    assert out == "recorded" and RECORDED, (out, RECORDED)
    person(RECORDED[0])


@driver.case("chat_completions_text")
def chat_text(o: Options) -> None:
    run_text(o, "chat")


@driver.case("chat_completions_stream")
def chat_stream(o: Options) -> None:
    run_stream(o, "chat")


@driver.case("chat_completions_output_type")
def chat_output_type(o: Options) -> None:
    run_output_type(o, "chat")


@driver.case("chat_completions_tools_required")
def chat_tools(o: Options) -> None:
    run_tools(o, "chat")


@driver.case("responses_text")
def responses_text(o: Options) -> None:
    run_text(o, "responses")


@driver.case("responses_stream")
def responses_stream(o: Options) -> None:
    run_stream(o, "responses")


@driver.case("responses_output_type")
def responses_output_type(o: Options) -> None:
    run_output_type(o, "responses")


@driver.case("responses_tools_required")
def responses_tools(o: Options) -> None:
    run_tools(o, "responses")


if __name__ == "__main__":
    driver.main()
