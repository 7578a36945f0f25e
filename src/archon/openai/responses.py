"""OpenAI's Responses API as a translation over chat completions, for both servers.

A ``POST /v1/responses`` body becomes a chat-completions body (`to_chat`), the chat path answers
it as it answers any chat (validation, retrieval, limits, routing), and its answer comes back as
a Response object (responses_output.py) or, streamed, as the Responses typed events
(responses_stream.py). The shapes follow OpenAI's published spec (``CreateResponse``,
``Response``, ``ResponseStreamEvent``).

Stateless, as vLLM is by default: nothing is stored, so ``store: true`` (OpenAI's default) is
accepted and answered with ``store: false``; ``previous_response_id``, ``conversation`` and
``item_reference`` inputs, which need stored state, are refused with a 400 that says to send
the earlier turns in ``input``. Built-in tools, image/file/audio input, ``background`` and
reusable ``prompt`` templates are refused by name.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from archon.errors import ArchonError, InvalidRequestError

# Marks an assistant turn's logprobs as wanted (the only `include` value with an effect here:
# the others ask for data of items this server never produces).
LOGPROBS_INCLUDE = "message.output_text.logprobs"

_TEXT_PARTS = ("input_text", "output_text", "text")
_STATELESS = "this server stores no responses; send the earlier turns in 'input' instead"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: str | None = None  # OpenAI's own models' length hint: no effect here


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None


class ResponsesRequest(_Strict):
    """``CreateResponse``: every field of the spec, plus vLLM's sampling extensions.

    Items, tools and tool_choice are checked by `to_chat`, which names the offending field.
    """

    model: str | None = None  # the chat path requires it (the agent fills in its default)
    input: str | list[Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    include: list[str] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    context_management: list[Any] | None = None
    # Accepted, no effect on a self-hosted model.
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    max_tool_calls: int | None = None  # counts built-in tool calls, which never happen here
    moderation: dict[str, Any] | None = None
    # vLLM's sampling extensions, as on chat.
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None


@dataclass
class Translation:
    """A Responses request turned into a chat body, and what it takes to turn the answer back."""

    request: ResponsesRequest
    chat: dict[str, Any]
    # Per chat message, the Responses field it came from ("instructions", "input[2]"): an error
    # about messages[k] names that field.
    origins: list[str] = field(default_factory=list)
    response_id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)


def to_chat(req: ResponsesRequest) -> Translation:
    """The chat-completions body that answers ``req``, or a 400 naming the field it cannot."""
    _refuse_unsupported(req)
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
        origins.append("instructions")
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        origins.append("input")
    else:
        for index, item in enumerate(req.input or []):
            _add_item(messages, origins, item, f"input[{index}]")
    chat: dict[str, Any] = {"messages": messages}
    if req.model is not None:
        chat["model"] = req.model
    if req.max_output_tokens is not None:
        chat["max_tokens"] = req.max_output_tokens
    for name in (
        "temperature",
        "top_p",
        "user",
        "seed",
        "top_k",
        "min_p",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "stop",
        "parallel_tool_calls",
    ):
        value = getattr(req, name)
        if value is not None:
            chat[name] = value
    if LOGPROBS_INCLUDE in (req.include or []) or req.top_logprobs:
        chat["logprobs"] = True
        if req.top_logprobs:
            chat["top_logprobs"] = req.top_logprobs
    if req.tools:
        chat["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(req.tools)]
    if req.tool_choice is not None:
        _set_tool_choice(chat, req.tool_choice)
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type != "text":
        chat["response_format"] = _response_format(fmt)
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # for the final event's usage
    return Translation(req, chat, origins)


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise InvalidRequestError(
            f"Previous response with id '{req.previous_response_id}' not found: {_STATELESS}",
            param="previous_response_id",
        )
    if req.conversation is not None:
        raise _refuse(f"Conversations are not supported: {_STATELESS}", "conversation")
    if req.background:
        raise InvalidRequestError(
            "Background responses are not supported by this server; stream the response instead",
            param="background",
        )
    if req.prompt is not None:
        raise InvalidRequestError(
            "Reusable prompt templates are not supported by this server; send the prompt's "
            "text in 'instructions' and 'input'",
            param="prompt",
        )
    if req.context_management is not None:
        raise InvalidRequestError(
            "Context management (compaction) is not supported by this server",
            param="context_management",
        )
    if req.input is None:
        raise InvalidRequestError("Missing required parameter: 'input'", param="input")


def _refuse(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


# -- input items -----------------------------------------------------------------------------


def _add_item(messages: list[dict[str, Any]], origins: list[str], item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise _refuse("Each input item must be an object", param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise _refuse(
                f"Invalid role {role!r}: use 'user', 'system', 'developer' or 'assistant'",
                f"{param}.role",
            )
        messages.append({"role": role, "content": _content_text(item.get("content"), param)})
        origins.append(param)
    elif kind == "function_call":
        call = {
            "id": _string(item, "call_id", param),
            "type": "function",
            "function": {
                "name": _string(item, "name", param),
                "arguments": _string(item, "arguments", param),
            },
        }
        last = messages[-1] if messages else None
        # Calls that follow an assistant turn belong to it, as one chat message carries them.
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            origins.append(param)
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _parts_text(output, f"{param}.output")
        messages.append(
            {"role": "tool", "tool_call_id": _string(item, "call_id", param), "content": text}
        )
        origins.append(param)
    elif kind == "reasoning":
        pass  # another model's reasoning: nothing this model can read
    elif kind == "item_reference":
        raise _refuse(f"Item references are not supported: {_STATELESS}", param)
    else:
        raise _refuse(
            f"Input items of type {kind!r} are not supported; use 'message', 'function_call' "
            "or 'function_call_output'",
            f"{param}.type",
        )


def _string(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _refuse(f"Missing required parameter: '{param}.{key}'", f"{param}.{key}")
    return value


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    return _parts_text(content, f"{param}.content")


def _parts_text(parts: Any, param: str) -> str:
    if not isinstance(parts, list):
        raise _refuse("Expected a string or a list of content parts", param)
    texts = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise _refuse(
                f"Content part type {kind!r} is not supported; only text parts are "
                "('input_text', 'output_text')",
                f"{param}[{index}].type",
            )
    return "\n".join(texts)


# -- tools and formats -----------------------------------------------------------------------


def _chat_tool(tool: Any, index: int) -> dict[str, Any]:
    param = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise _refuse("Each tool must be an object", param)
    kind = tool.get("type")
    if kind != "function":
        raise _refuse(
            f"Only tools of type 'function' are supported, not {kind!r}: this server has no "
            "built-in tools",
            f"{param}.type",
        )
    known = {"type", "name", "description", "parameters", "strict"}
    function = {k: v for k, v in tool.items() if k in known and k != "type" and v is not None}
    if "name" not in function:
        raise _refuse(f"Missing required parameter: '{param}.name'", f"{param}.name")
    return {"type": "function", "function": function}


def _set_tool_choice(chat: dict[str, Any], choice: str | dict[str, Any]) -> None:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _refuse(
                f"Invalid tool_choice {choice!r}: use 'none', 'auto', 'required' or a function",
                "tool_choice",
            )
        chat["tool_choice"] = choice
        return
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
        chat["tools"] = [t for t in chat.get("tools", []) if t["function"]["name"] in allowed]
        chat["tool_choice"] = choice["mode"]
    else:
        raise _refuse(
            f"tool_choice of type {kind!r} is not supported; use 'none', 'auto', 'required', "
            "a function ({'type': 'function', 'name': ...}) or allowed_tools",
            "tool_choice",
        )


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None:
        raise _refuse("Missing required parameter: 'text.format.name'", "text.format.name")
    if fmt.schema_ is None:
        raise _refuse("Missing required parameter: 'text.format.schema'", "text.format.schema")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


# -- errors ----------------------------------------------------------------------------------

_MESSAGES = re.compile(r"^messages(?:\[(\d+)\])?")
_RENAMED = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "logprobs": "include",
    "stream_options": "stream",
    "response_format": "text.format",
}


def responses_param(param: str | None, origins: list[str]) -> str | None:
    """The Responses field that a chat-path error's ``param`` is about."""
    if param is None:
        return None
    match = _MESSAGES.match(param)
    if match:
        index = match.group(1)
        if index is not None and int(index) < len(origins):
            return origins[int(index)]
        return "input"
    if param.startswith("response_format"):
        return "text.format.schema" if param.endswith(".schema") else "text.format"
    if param.startswith("tools["):
        return param.replace(".function", "", 1)
    if param.startswith("tool_choice"):
        return "tool_choice"
    root = re.split(r"[.\[]", param, maxsplit=1)[0]
    return _RENAMED.get(root, param)


def rename_param(exc: ArchonError, translation: Translation) -> ArchonError:
    exc.param = responses_param(exc.param, translation.origins)
    return exc


def renamed_error_body(body: dict[str, Any], translation: Translation) -> dict[str, Any]:
    """An OpenAI error body from the chat path, its ``param`` named as in the Responses API."""
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("param"), str):
        error["param"] = responses_param(error["param"], translation.origins)
    return body
