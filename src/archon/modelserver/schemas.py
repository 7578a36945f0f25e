"""OpenAI-compatible request schemas of the model server.

Policy (docs/api.md): every field of OpenAI's published spec is accepted. Fields that only
matter to OpenAI's own service (``store``, ``metadata``, ``service_tier``, ...) are accepted and
ignored; fields that ask for behaviour this server does not have (audio output, web search,
image input) are refused by name with a 400. Fields outside the spec and vLLM's sampling
extensions are refused like OpenAI refuses them ("Unrecognized request argument supplied"), so a
misspelt ``max_token`` never silently does nothing. Types are strict: ``"stream": "yes"`` is a
400, not ``true``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from archon.errors import InvalidRequestError
from archon.openai.messages import content_text, unsupported_part

# The spec's fields that change nothing for a self-hosted model; logged once when first seen.
NO_OP_FIELDS = (
    "store",
    "metadata",
    "service_tier",
    "user",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "verbosity",
    "reasoning_effort",
    "prediction",
    "moderation",
)

MAX_STOP_SEQUENCES = 64
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Lenient(BaseModel):
    """Parts of messages: clients add their own keys there (ids, timestamps); ignore them."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's extension


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    refusal: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCall(_Lenient):
    id: str
    type: str = "function"
    function: FunctionCall | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    function_call: FunctionCall | None = None
    audio: dict[str, Any] | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return content_text(self.content)
        parts = [part.model_dump() for part in self.content]
        bad = unsupported_part(parts)
        if bad is not None:
            raise InvalidRequestError(
                f"Content part type '{parts[bad]['type']}' is not supported; only 'text' parts are",
                param=f"messages[{index}].content[{bad}].type",
            )
        return content_text(parts)


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: str
    function: FunctionDefinition | None = None
    custom: dict[str, Any] | None = None


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: str
    function: NamedFunction | None = None
    custom: dict[str, Any] | None = None
    allowed_tools: dict[str, Any] | None = None


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Strict):
    """Fields common to chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=128)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's sampling extensions, so one client works against both engines.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    def choices(self) -> int:
        return self.n or 1

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequestError(
                f"At most {MAX_STOP_SEQUENCES} stop sequences are supported", param="stop"
            )
        return [s for s in stops if s]  # OpenAI ignores empty stop strings

    def logit_bias_pairs(self, n_vocab: int) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as (token id, bias) pairs, each checked like OpenAI checks them."""
        if not self.logit_bias:
            return ()
        pairs = []
        for key, bias in self.logit_bias.items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < n_vocab:
                raise InvalidRequestError(
                    f"Invalid key in 'logit_bias': {key!r} is not a token id of this model "
                    f"(0 to {n_vocab - 1})",
                    param="logit_bias",
                )
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequestError(
                    f"Invalid value for 'logit_bias' of token {key}: {bias} is outside -100..100",
                    param="logit_bias",
                )
            pairs.append((int(key), float(bias)))
        return tuple(pairs)

    def check_supported(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        self.stop_list()

    def ignored_fields(self) -> list[str]:
        return [name for name in NO_OP_FIELDS if getattr(self, name, None) is not None]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # No-ops for a self-hosted model (NO_OP_FIELDS).
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    reasoning_effort: str | None = None
    prediction: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.functions is not None or self.function_call is not None:
            name = "functions" if self.functions is not None else "function_call"
            raise InvalidRequestError(
                f"'{name}' is deprecated and not supported; use 'tools' and 'tool_choice'",
                param=name,
            )
        if self.modalities and any(m != "text" for m in self.modalities):
            raise InvalidRequestError(
                "Only the 'text' output modality is supported", param="modalities"
            )
        if self.audio is not None:
            raise InvalidRequestError("Audio output is not supported", param="audio")
        if self.web_search_options is not None:
            raise InvalidRequestError(
                "Web search is not available on this server", param="web_search_options"
            )
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError(
                "'top_logprobs' requires 'logprobs' to be true", param="top_logprobs"
            )
        for i, message in enumerate(self.messages):
            if message.role == "function":
                raise InvalidRequestError(
                    "The 'function' role is deprecated and not supported; use 'tool'",
                    param=f"messages[{i}].role",
                )
            if message.audio is not None:
                raise InvalidRequestError(
                    "Audio in messages is not supported", param=f"messages[{i}].audio"
                )
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise InvalidRequestError(
                "response_format of type 'json_schema' needs a 'json_schema' object",
                param="response_format.json_schema",
            )
        self._check_tools()

    def _check_tools(self) -> None:
        for i, tool in enumerate(self.tools or []):
            if tool.type == "function" and tool.function is None:
                raise InvalidRequestError(
                    "A tool of type 'function' needs a 'function' object",
                    param=f"tools[{i}].function",
                )
            if tool.type != "function" or tool.function is None:
                raise InvalidRequestError(
                    f"Only tools of type 'function' are supported, not '{tool.type}'",
                    param=f"tools[{i}].type",
                )
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            if choice.type != "function" or choice.function is None:
                raise InvalidRequestError(
                    f"tool_choice of type '{choice.type}' is not supported; use 'none', "
                    "'auto', 'required' or a named function",
                    param="tool_choice",
                )
            if choice.function.name not in self.tool_names():
                raise InvalidRequestError(
                    f"tool_choice names the function '{choice.function.name}', which is not "
                    "among 'tools'",
                    param="tool_choice",
                )
        elif choice == "required" and not self.tools:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one tool in 'tools'", param="tool_choice"
            )
        fmt = self.response_format
        if self.tools and fmt and fmt.type != "text" and self.tool_choice != "none":
            raise InvalidRequestError(
                "'response_format' cannot be combined with 'tools' unless tool_choice is 'none'",
                param="response_format",
            )

    def tool_names(self) -> list[str]:
        return [t.function.name for t in self.tools or [] if t.function is not None]

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_count(self) -> int | None:
        """None for no logprobs, else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's spec allows 0 here (with echo: the prompt and its logprobs, nothing generated).
    max_tokens: int | None = Field(None, ge=0)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=0, le=20)
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise InvalidRequestError(
                "suffix (fill-in-the-middle) is not supported by this server", param="suffix"
            )
        if self.best_of not in (None, 0, 1) and self.best_of != self.choices():
            raise InvalidRequestError(
                "best_of other than n is not supported; send n alone", param="best_of"
            )
        if self.max_tokens == 0 and not self.echo:
            # As vLLM: without echo there is nothing to answer with.
            raise InvalidRequestError(
                "max_tokens must be at least 1, got 0 (0 is only allowed with echo: the "
                "prompt and its logprobs)",
                param="max_tokens",
            )

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, each as text or as token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def output_limit(self) -> int | None:
        # OpenAI's legacy completions default to 16 tokens.
        return self.max_tokens if self.max_tokens is not None else 16
