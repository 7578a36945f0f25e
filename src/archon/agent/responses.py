"""``POST /v1/responses`` through the agent: the Responses body becomes a chat body
(archon.openai.responses), the gateway answers that chat as any other (retrieval, a key's
models and limits, routing, failover), and its answer comes back as a Response object or the
Responses event stream, with the chat answer's ``sources`` on the Response."""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archon.agent.auth import ApiKey
from archon.agent.gateway import Gateway
from archon.errors import ArchonError
from archon.http import parse_json_object
from archon.openai.responses import (
    ResponsesRequest,
    Translation,
    rename_param,
    renamed_error_body,
    to_chat,
)
from archon.openai.responses_output import from_chat_completion
from archon.openai.responses_stream import response_stream


async def create_response(gateway: Gateway, request: Request, key: ApiKey | None) -> Response:
    data = parse_json_object(await request.body())
    options = data.pop("archon", None)  # the agent's own options, as on chat
    try:
        body = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    translation = to_chat(body)
    chat = translation.chat if options is None else {**translation.chat, "archon": options}
    raw = json.dumps(chat, ensure_ascii=False).encode()
    try:
        answer = await gateway.chat(request, key, raw)
    except ArchonError as exc:
        raise rename_param(exc, translation) from None
    return _translated(answer, translation)


def _translated(answer: Response, translation: Translation) -> Response:
    if isinstance(answer, StreamingResponse):
        if answer.status_code == 200:
            answer.body_iterator = response_stream(answer.body_iterator, translation)
        return answer
    content_type = answer.headers.get("content-type", "")
    if not answer.body or "json" not in content_type:
        return answer  # e.g. the 499 of a client that left
    data: Any = json.loads(bytes(answer.body))
    if answer.status_code == 200 and isinstance(data, dict):
        data = from_chat_completion(data, translation)
    elif isinstance(data, dict):
        data = renamed_error_body(data, translation)
    headers = {
        k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")
    }
    return Response(
        json.dumps(data, ensure_ascii=False).encode(),
        status_code=answer.status_code,
        headers=headers,
        media_type="application/json",
    )
