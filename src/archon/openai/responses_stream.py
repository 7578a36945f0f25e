"""A chat-completions SSE stream as the Responses API's typed event stream.

Events in the spec's order: ``response.created``, ``response.in_progress``; per output item
``response.output_item.added``, then for a message ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, or for a function call
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``; then
``response.output_item.done``; last ``response.completed`` (``response.incomplete`` when the
answer was cut by ``max_output_tokens``). An error in the chat stream becomes an ``error`` event
and ``response.failed``. Every event has its ``sequence_number``, counted from 0.

The input is bytes as they come (from the model server's own stream or an upstream's, split
anywhere); the agent's ``sources`` on any chunk go onto the final response.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

from archon.openai.responses import Translation
from archon.openai.responses_output import (
    function_call_item,
    message_item,
    new_item_id,
    output_text,
    response_object,
    response_usage,
)


class _Message:
    def __init__(self, index: int):
        self.id = new_item_id("msg")
        self.index = index
        self.text: list[str] = []
        self.logprobs: list[Any] = []


class _Call:
    def __init__(self, index: int, call_id: str, name: str):
        self.id = new_item_id("fc")
        self.index = index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []


class ResponseEvents:
    """Turns parsed chat chunks into Responses events (dicts), one call per chunk."""

    def __init__(self, translation: Translation):
        self.translation = translation
        self.model = translation.request.model or ""
        self.sequence = 0
        self.started = False
        self.ended = False
        self.output: list[dict[str, Any]] = []
        self.message: _Message | None = None
        self.calls: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.sources: Any = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _response(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        response = response_object(
            self.translation,
            model=self.model,
            status=status,
            output=list(self.output),
            usage=self.usage,
            error=error,
        )
        if self.sources is not None:
            response["sources"] = self.sources
        return response

    def _start(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if self.ended:
            return []
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        events = self._start()
        if isinstance(chunk.get("error"), dict):
            return events + self.fail(chunk["error"])
        if "sources" in chunk:
            self.sources = chunk["sources"]
        if chunk.get("usage"):
            self.usage = response_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                logprobs = (choice.get("logprobs") or {}).get("content") or []
                events += self._text(content, logprobs)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text(self, text: str, logprobs: list[Any]) -> list[dict[str, Any]]:
        events = []
        if self.message is None:
            events += self._close_calls("completed")
            events += self._open_message()
        message = self.message
        assert message is not None
        message.text.append(text)
        message.logprobs.extend(logprobs)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=message.id,
                output_index=message.index,
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        )
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        message = self.message = _Message(len(self.output))
        item = message_item(message.id, "", "in_progress")
        item["content"] = []
        self.output.append(item)
        return [
            self._event("response.output_item.added", output_index=message.index, item=item),
            self._event(
                "response.content_part.added",
                item_id=message.id,
                output_index=message.index,
                content_index=0,
                part=output_text(""),
            ),
        ]

    def _call(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self.calls.get(index)
        if call is None:
            events += self._close_message("completed")
            call = _Call(
                len(self.output),
                str(delta.get("id") or new_item_id("call")),
                str(function.get("name") or ""),
            )
            self.calls[index] = call
            item = function_call_item(call.id, call.call_id, call.name, "", "in_progress")
            self.output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=call.index, item=item)
            )
        arguments = function.get("arguments")
        if arguments:
            call.arguments.append(arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=arguments,
                )
            )
        return events

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        message, self.message = self.message, None
        if message is None:
            return []
        text = "".join(message.text)
        part = output_text(text, message.logprobs)
        item = message_item(message.id, text, status, message.logprobs)
        self.output[message.index] = item
        return [
            self._event(
                "response.output_text.done",
                item_id=message.id,
                output_index=message.index,
                content_index=0,
                text=text,
                logprobs=message.logprobs,
            ),
            self._event(
                "response.content_part.done",
                item_id=message.id,
                output_index=message.index,
                content_index=0,
                part=part,
            ),
            self._event("response.output_item.done", output_index=message.index, item=item),
        ]

    def _close_calls(self, status: str) -> list[dict[str, Any]]:
        events = []
        for call in self.calls.values():
            arguments = "".join(call.arguments)
            item = function_call_item(call.id, call.call_id, call.name, arguments, status)
            self.output[call.index] = item
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.id,
                    name=call.name,
                    output_index=call.index,
                    arguments=arguments,
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=call.index, item=item)
            )
        self.calls = {}
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The events after the chat stream's [DONE]: open items done, then the final one."""
        if self.ended:
            return []
        events = self._start()
        status = "incomplete" if self.finish_reason == "length" else "completed"
        if not self.output:
            # An answer with no text at all is still one (empty) message, as OpenAI sends it.
            events += self._open_message()
        events += self._close_message(status)
        events += self._close_calls(status)
        self.ended = True
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self._response(status)))
        return events

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``error`` event and ``response.failed``, what was generated kept as incomplete."""
        if self.ended:
            return []
        events = self._start()
        events += self._close_message("incomplete")
        events += self._close_calls("incomplete")
        self.ended = True
        message = str(error.get("message") or "The response failed")
        events.append(
            self._event(
                "error",
                code=error.get("code") or error.get("type"),
                message=message,
                param=error.get("param"),
            )
        )
        failed = self._response("failed", {"code": "server_error", "message": message})
        events.append(self._event("response.failed", response=failed))
        return events


def frame(event: dict[str, Any]) -> bytes:
    """One event as SSE, with its ``event:`` line as OpenAI sends it."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def chat_payloads(chunks: AsyncIterable[Any]) -> AsyncGenerator[str, None]:
    """The ``data:`` payloads of an SSE stream (bytes or str), however its bytes were split."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        buffer = buffer.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = [
                line[5:].removeprefix(b" ")
                for line in block.split(b"\n")
                if line.startswith(b"data:")
            ]
            if data:
                yield b"\n".join(data).decode()
    if buffer.strip().startswith(b"data:"):
        yield buffer.strip()[5:].strip().decode()


async def response_stream(
    chat_stream: AsyncIterable[Any], translation: Translation
) -> AsyncIterator[bytes]:
    """The Responses event stream for a chat-completions SSE stream."""
    events = ResponseEvents(translation)
    payloads = chat_payloads(chat_stream)
    try:
        async for payload in payloads:
            if payload == "[DONE]":
                for event in events.finish():
                    yield frame(event)
                return
            try:
                chunk = json.loads(payload)
            except ValueError:
                continue
            if isinstance(chunk, dict):
                for event in events.feed(chunk):
                    yield frame(event)
            if events.ended:
                return
        for event in events.fail({"message": "The answer stream ended early", "code": None}):
            yield frame(event)
    finally:
        # Closing the chat stream when this one is closed (the client left, or the end came
        # first) ends its generation and its bookkeeping now, not when it is collected.
        await payloads.aclose()
        aclose = getattr(chat_stream, "aclose", None)
        if aclose is not None:
            await aclose()
