"""langchain-openai (ChatOpenAI, OpenAIEmbeddings) against Archon, in its default methods."""

from __future__ import annotations

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
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

driver = Driver("langchain")


def chat_model(o: Options, max_tokens: int = MAX_TOKENS, **kw) -> ChatOpenAI:
    return ChatOpenAI(
        model=o.model,
        base_url=o.base_url,
        api_key="sk-none",
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=180,
        **kw,
    )


@driver.case("chat")
def chat(o: Options) -> None:
    clean(chat_model(o).invoke(SMALL_TALK).content)


@driver.case("stream")
def stream(o: Options) -> None:
    chunks = list(chat_model(o).stream(SMALL_TALK))
    clean("".join(c.content for c in chunks if isinstance(c.content, str)))


@driver.case("tools_named")
def tools_named(o: Options) -> None:
    llm = chat_model(o, STRUCTURED_MAX_TOKENS).bind_tools([Person], tool_choice="Person")
    msg = llm.invoke(EXTRACT)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "Person", msg
    person(msg.tool_calls[0]["args"])
    if msg.content:
        clean(msg.content)


@driver.case("tools_required")
def tools_required(o: Options) -> None:
    llm = chat_model(o, STRUCTURED_MAX_TOKENS).bind_tools([Person], tool_choice="any")
    msg = llm.invoke(EXTRACT)
    assert msg.tool_calls, msg
    person(msg.tool_calls[0]["args"])


@driver.case("structured_output")
def structured_output(o: Options) -> None:
    # with_structured_output's default method at this version (json_schema).
    result = chat_model(o, STRUCTURED_MAX_TOKENS).with_structured_output(Person).invoke(EXTRACT)
    assert isinstance(result, Person), result


@driver.case("embeddings")
def embeddings(o: Options) -> None:
    emb = OpenAIEmbeddings(
        model=o.embedding_model,
        base_url=o.base_url,
        api_key="sk-none",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    vectors(emb.embed_documents(["hello", "a longer text"]), 2)
    vectors([emb.embed_query("hello")], 1)


@driver.case("responses")
def responses(o: Options) -> None:
    msg = chat_model(o, use_responses_api=True).invoke(SMALL_TALK)
    clean(msg.text)


@driver.case("responses_stream")
def responses_stream(o: Options) -> None:
    chunks = list(chat_model(o, use_responses_api=True).stream(SMALL_TALK))
    clean("".join(c.text for c in chunks))


@driver.case("responses_structured_output")
def responses_structured(o: Options) -> None:
    llm = chat_model(o, STRUCTURED_MAX_TOKENS, use_responses_api=True)
    assert isinstance(llm.with_structured_output(Person).invoke(EXTRACT), Person)


if __name__ == "__main__":
    driver.main()
