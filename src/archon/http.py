"""ASGI pieces shared by Archon's services."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archon.errors import InvalidRequestError, error_body

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# No OpenAI request nests anywhere near this deep; a deeper body is an attack or a bug.
MAX_JSON_DEPTH = 64


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or a 400 saying what is wrong with it.

    Strict JSON (RFC 8259): orjson refuses NaN/Infinity and unpaired UTF-16 surrogates, which
    Python's json module lets through to fail later as 500s.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"Malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise InvalidRequestError(
            f"Malformed JSON body: nested deeper than {MAX_JSON_DEPTH} levels"
        )
    return data


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative on purpose: a recursive walk is what a deep body would crash.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


async def parse_json_body(request: Request, model: type[M]) -> M:
    """Parse a JSON object body whatever its content-type (curl users often omit it)."""
    data = parse_json_object(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def run_unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``; if the client closes the connection first, cancel it and return None.

    Waits on the ASGI disconnect message itself (call it after the body has been read): polling
    ``request.is_disconnected()`` from a cancelled scope sometimes missed the disconnect.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        return task.result() if task.done() else None
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with an OpenAI-shaped 413, before parsing them."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return

        received = 0
        too_large = False
        forwarded = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal forwarded
            # Once the body ran over, whatever the app answers (FastAPI turns the read error
            # into a 400) is replaced by our 413.
            if too_large:
                return
            forwarded = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not forwarded:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                f"Request body is larger than the limit of {self.max_bytes} bytes",
                "invalid_request_error",
                code="request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
