"""llama-index's OpenAILike LLM and OpenAILikeEmbedding against Archon."""

# No `from __future__ import annotations`: FunctionTool reads record_person's annotations as
# objects, and a string "Person" is left unresolved.
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
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.llms.openai_like import OpenAILike

driver = Driver("llama-index")


def llm(o: Options, max_tokens: int = MAX_TOKENS, chat: bool = True) -> OpenAILike:
    return OpenAILike(
        model=o.model,
        api_base=o.base_url,
        api_key="sk-none",
        is_chat_model=chat,
        is_function_calling_model=True,
        context_window=2048,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=180,
    )


@driver.case("chat")
def chat(o: Options) -> None:
    r = llm(o).chat([ChatMessage(role="user", content=SMALL_TALK)])
    clean(r.message.content)


@driver.case("stream_chat")
def stream_chat(o: Options) -> None:
    chunks = list(llm(o).stream_chat([ChatMessage(role="user", content=SMALL_TALK)]))
    clean("".join(c.delta or "" for c in chunks))


@driver.case("complete")
def complete(o: Options) -> None:
    # is_chat_model=False: /v1/completions.
    clean(llm(o, 16, chat=False).complete("The capital of France is").text)


def record_person(person: Person) -> str:
    """Record a person mentioned in the text."""
    return "recorded"


@driver.case("tools_required")
def tools_required(o: Options) -> None:
    model = llm(o, STRUCTURED_MAX_TOKENS)
    tool = FunctionTool.from_defaults(fn=record_person)
    r = model.chat_with_tools([tool], user_msg=EXTRACT, tool_required=True)
    calls = model.get_tool_calls_from_response(r, error_on_no_tool_call=True)
    assert calls[0].tool_name == "record_person", calls
    person(calls[0].tool_kwargs["person"])


@driver.case("structured_predict")
def structured_predict(o: Options) -> None:
    out = llm(o, STRUCTURED_MAX_TOKENS).structured_predict(
        Person, PromptTemplate("Extract the person: {text}"), text=EXTRACT
    )
    person(out)


@driver.case("as_structured_llm")
def as_structured_llm(o: Options) -> None:
    sllm = llm(o, STRUCTURED_MAX_TOKENS).as_structured_llm(Person)
    r = sllm.chat([ChatMessage(role="user", content=EXTRACT)])
    person(r.raw)


@driver.case("embeddings")
def embeddings(o: Options) -> None:
    emb = OpenAILikeEmbedding(
        model_name=o.embedding_model, api_base=o.base_url, api_key="sk-none", max_retries=0
    )
    vectors(emb.get_text_embedding_batch(["hello", "a longer text"]), 2)
    vectors([emb.get_query_embedding("hello")], 1)


if __name__ == "__main__":
    driver.main()
