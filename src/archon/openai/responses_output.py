"""Chat answers as the Responses API's output: the Response object, its items and usage.

The request side is responses.py; the streamed events are responses_stream.py.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from archon.openai.responses import Translation


def response_object(
    translation: Translation,
    *,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object: the request's settings echoed, with this status and output."""
    req = translation.request
    done = status in ("completed", "incomplete", "failed")
    fmt = (
        req.text.format.model_dump(by_alias=True, exclude_none=True)
        if req.text is not None and req.text.format is not None
        else {"type": "text"}
    )
    response = {
        "id": translation.response_id,
        "object": "response",
        "created_at": translation.created_at,
        "status": status,
        "completed_at": int(time.time()) if done and status != "failed" else None,
        "error": error,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "model": model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,  # nothing is stored (the module docstring)
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [_echo_tool(t) for t in req.tools or []],
        "top_logprobs": req.top_logprobs or 0,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation or "disabled",
        "metadata": req.metadata or {},
        "background": False,
        "service_tier": "default",
    }
    if usage is not None:  # the spec's `usage` is an object, never null: absent until known
        response["usage"] = usage
    if req.user is not None:
        response["user"] = req.user  # the spec's `user` is a string, never null
    return response


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {"strict": None, "parameters": None, "description": None, **tool}


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage as Responses usage (input/output tokens and their details)."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def message_item(
    item_id: str, text: str, status: str, logprobs: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text, logprobs)],
    }


def output_text(text: str, logprobs: list[Any] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def from_chat_completion(completion: dict[str, Any], translation: Translation) -> dict[str, Any]:
    """A whole chat completion as the Response object; the agent's ``sources`` kept."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    incomplete = choice.get("finish_reason") == "length"
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    content = message.get("content")
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if isinstance(content, str) and (content or not calls):
        logprobs = (choice.get("logprobs") or {}).get("content")
        output.append(message_item(new_item_id("msg"), content, status, logprobs))
    for call in calls:
        function = call.get("function") or {}
        output.append(
            function_call_item(
                new_item_id("fc"),
                str(call.get("id") or new_item_id("call")),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
                "incomplete" if incomplete else "completed",
            )
        )
    response = response_object(
        translation,
        model=str(completion.get("model") or translation.request.model or ""),
        status=status,
        output=output,
        usage=response_usage(completion.get("usage")),
    )
    if "sources" in completion:
        response["sources"] = completion["sources"]
    return response
