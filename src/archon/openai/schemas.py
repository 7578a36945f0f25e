"""OpenAI-compatible request schemas shared by the model server and the agent.

Unknown fields are refused (as OpenAI does: "Unrecognized request argument supplied"), and
fields we know but do not implement are refused by name, so a client never silently gets
behaviour it did not ask for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from archon.errors import InvalidRequestError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise InvalidRequestError(
                    f"Content part type '{part.type}' is not supported; only 'text' parts are",
                    param=f"messages[{index}].content[{j}].type",
                )
            parts.append(part.text)
        return "".join(parts)


class SamplingFields(BaseModel):
    """Fields common to chat and text completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 16:
            raise InvalidRequestError("At most 16 stop sequences are supported", param="stop")
        if any(s == "" for s in stops):
            raise InvalidRequestError("Stop sequences must not be empty", param="stop")
        return stops

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise InvalidRequestError(
                "Only n=1 is supported; send separate requests for more choices", param="n"
            )
        if self.logprobs not in (None, False, 0):
            raise InvalidRequestError("logprobs are not supported by this server", param="logprobs")
        if self.logit_bias:
            raise InvalidRequestError(
                "logit_bias is not supported by this server", param="logit_bias"
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        self.stop_list()


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("tools", "functions", "top_logprobs"):
            if getattr(self, name):
                raise InvalidRequestError(f"'{name}' is not supported by this server", param=name)
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                raise InvalidRequestError(f"'{name}' is not supported by this server", param=name)
        if self.response_format and self.response_format.get("type") != "text":
            raise InvalidRequestError(
                "Only response_format type 'text' is supported", param="response_format"
            )

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise InvalidRequestError("echo is not supported by this server", param="echo")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported by this server", param="suffix")
        if self.best_of not in (None, 1):
            raise InvalidRequestError("Only best_of=1 is supported", param="best_of")

    def single_prompt(self) -> str | list[int]:
        """One prompt as text or token ids; batches of prompts are refused."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return list(prompt)  # type: ignore[arg-type]
        if len(prompt) != 1:
            raise InvalidRequestError(
                "Only one prompt per request is supported; send separate requests", param="prompt"
            )
        return prompt[0]  # type: ignore[return-value]

    def output_limit(self) -> int | None:
        # OpenAI's legacy completions default to 16 tokens.
        return self.max_tokens if self.max_tokens is not None else 16
