"""``POST /v1/responses`` on the model server: the request translated to a chat completion
(archon.openai.responses), answered by the chat path (same validation, preparation and
engine), and the answer translated back, whole or as the Responses event stream."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from archon.errors import ArchonError, InvalidRequestError
from archon.http import parse_json_body, run_unless_client_leaves
from archon.modelserver.preparation import RequestPreparer
from archon.modelserver.schemas import ChatCompletionRequest
from archon.modelserver.serving import CompletionService
from archon.openai.responses import (
    ResponsesRequest,
    Translation,
    rename_param,
    responses_param,
    to_chat,
)
from archon.openai.responses_output import from_chat_completion
from archon.openai.responses_stream import response_stream
from archon.openai.sse import SSE_HEADERS


async def create_response(
    request: Request, preparer: RequestPreparer, service: CompletionService
) -> Response:
    body = await parse_json_body(request, ResponsesRequest)
    translation = to_chat(body)
    chat = _chat_request(translation)
    try:
        prepared = await preparer.prepare_chat(chat)
    except ArchonError as exc:
        raise rename_param(exc, translation) from None
    if prepared.stream:
        return StreamingResponse(
            response_stream(service.stream(prepared), translation),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    result = await run_unless_client_leaves(request, service.complete(prepared))
    if result is None:
        return Response(status_code=499)  # the client left; the generation was stopped
    return JSONResponse(from_chat_completion(result, translation))


def _chat_request(translation: Translation) -> ChatCompletionRequest:
    """The translated body through chat's own validation, its errors named as Responses'."""
    try:
        return ChatCompletionRequest.model_validate(translation.chat)
    except ValidationError as exc:
        first: dict[str, Any] = dict(exc.errors()[0])
        loc = [str(p) for p in first.get("loc", ()) if not _is_union_tag(str(p))]
        chat_param = ".".join(loc).replace(".[", "[") if loc else None
        for part in loc:
            if part.isdigit() and chat_param is not None:
                chat_param = chat_param.replace(f".{part}", f"[{part}]", 1)
        param = responses_param(chat_param, translation.origins)
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'"
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}"
        raise InvalidRequestError(message, param=param) from None


def _is_union_tag(part: str) -> bool:
    # pydantic names the union member it tried ("str", "list[...]", "NamedToolChoice").
    return "[" in part or "(" in part or part[:1].isupper() or part in {"str", "int", "float"}
