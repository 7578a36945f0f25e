"""pydantic-ai (OpenAIChatModel, OpenAIResponsesModel, Embedder) against Archon."""

from __future__ import annotations

import asyncio

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
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.embeddings import Embedder
from pydantic_ai.embeddings.openai import OpenAIEmbeddingModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

driver = Driver("pydantic-ai")


def provider(o: Options) -> OpenAIProvider:
    return OpenAIProvider(base_url=o.base_url, api_key="sk-none")


def chat_model(o: Options) -> OpenAIChatModel:
    return OpenAIChatModel(o.model, provider=provider(o))


def settings(max_tokens: int) -> dict:
    return {"temperature": 0, "max_tokens": max_tokens}


@driver.case("chat")
def chat(o: Options) -> None:
    clean(Agent(chat_model(o), model_settings=settings(MAX_TOKENS)).run_sync(SMALL_TALK).output)


@driver.case("stream")
def stream(o: Options) -> None:
    async def go() -> str:
        agent = Agent(chat_model(o), model_settings=settings(MAX_TOKENS))
        async with agent.run_stream(SMALL_TALK) as result:
            return "".join([t async for t in result.stream_output(debounce_by=None)][-1:])

    clean(asyncio.run(go()))


@driver.case("output_type")
def output_type(o: Options) -> None:
    # The default output mode: a tool the model must call (tool_choice required).
    agent = Agent(chat_model(o), output_type=Person, model_settings=settings(STRUCTURED_MAX_TOKENS))
    person(agent.run_sync(EXTRACT).output)


@driver.case("output_type_native")
def output_type_native(o: Options) -> None:
    # NativeOutput: response_format json_schema.
    agent = Agent(
        chat_model(o),
        output_type=NativeOutput(Person),
        model_settings=settings(STRUCTURED_MAX_TOKENS),
    )
    person(agent.run_sync(EXTRACT).output)


@driver.case("responses")
def responses(o: Options) -> None:
    model = OpenAIResponsesModel(o.model, provider=provider(o))
    clean(Agent(model, model_settings=settings(MAX_TOKENS)).run_sync(SMALL_TALK).output)


@driver.case("responses_output_type")
def responses_output_type(o: Options) -> None:
    model = OpenAIResponsesModel(o.model, provider=provider(o))
    agent = Agent(model, output_type=Person, model_settings=settings(STRUCTURED_MAX_TOKENS))
    person(agent.run_sync(EXTRACT).output)


@driver.case("embeddings")
def embeddings(o: Options) -> None:
    embedder = Embedder(OpenAIEmbeddingModel(o.embedding_model, provider=provider(o)))
    vectors(embedder.embed_documents_sync(["hello", "a longer text"]).embeddings, 2)


if __name__ == "__main__":
    driver.main()
