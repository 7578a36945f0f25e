"""Typed errors and the one place that turns them into OpenAI-shaped HTTP responses.

Every error a client can see has the shape
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ArchonError(Exception):
    """An error with a known HTTP status and OpenAI error type."""

    status_code: int = 500
    error_type: str = "internal_error"
    code: str | None = None
    headers: dict[str, str] | None = None  # sent with the error response (Retry-After, ...)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if headers is not None:
            self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(ArchonError):
    status_code = 400
    error_type = "invalid_request_error"


class InternalError(ArchonError):
    """A bug of ours while serving one request; that request fails, the server goes on."""

    status_code = 500
    error_type = "internal_error"
    code = "internal_error"


class ModelNotFoundError(ArchonError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLargeError(ArchonError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ServiceUnavailableError(ArchonError):
    """The server cannot take the request now (loading, engine dead, queue full)."""

    status_code = 503
    error_type = "service_unavailable"


class AuthenticationError(ArchonError):
    status_code = 401
    error_type = "invalid_request_error"


class ModelNotAllowedError(ArchonError):
    """The key is valid but may not use this model (OpenAI: 403 model_not_found)."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "model_not_found"


class RateLimitError(ArchonError):
    """A per-key rate limit (requests or tokens per minute, concurrent requests)."""

    status_code = 429
    error_type = "requests"  # OpenAI's type names the limit: "requests" or "tokens"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, error_type: str, headers: dict[str, str]):
        super().__init__(message, headers=headers)
        self.error_type = error_type


class QuotaExceededError(ArchonError):
    """A per-key token budget (daily or monthly) is used up."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


class GatewayTimeoutError(ArchonError):
    """An upstream took longer than the agent's request_timeout."""

    status_code = 504
    error_type = "timeout"
    code = "upstream_timeout"


class SyncInProgressError(ArchonError):
    """A knowledge-base sync was asked for while one is running: a conflict, not bad config."""

    status_code = 409
    error_type = "conflict"
    code = "sync_in_progress"


class ConfigError(Exception):
    """A startup failure the operator fixes; the message names the setting to change.

    Each subclass has its own process exit code, so a crash loop tells what kind of fix it needs.
    """

    exit_code = 2  # a malformed or out-of-range setting


class ModelLoadError(ConfigError):
    exit_code = 3  # the model file exists but cannot be loaded with these settings


class ModelReferenceError(ConfigError):
    exit_code = 4  # llm_model does not exist (no such file, not on the hub, access refused)


class InsufficientVRAMError(ConfigError):
    exit_code = 5  # the model and its KV cache do not fit the GPU budget


class GPUCountError(ConfigError):
    exit_code = 6  # tensor_parallel_size is larger than the visible GPUs


class NetworkError(ConfigError):
    exit_code = 7  # the hub could not be reached, or the transfer kept failing


class DiskFullError(ConfigError):
    exit_code = 8  # the model cache has no room for the model


class EngineMissingError(ConfigError):
    exit_code = 9  # the engine's software (vLLM) is not installed


class StoreInUse(ConfigError):
    exit_code = 10  # the embedded knowledge-base store is open in another process


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _is_union_tag(part: str) -> bool:
    # pydantic names the union member it tried ("str", "list[int]", "function-after[...]",
    # "literal['none','auto']"); those are not request fields.
    return (
        "[" in part
        or "(" in part
        or part[:1].isupper()  # a model class: fields are snake_case
        or part in {"str", "int", "float", "bool", "list", "dict", "none"}
    )


def _param_from_loc(loc: tuple[Any, ...], error_type: str = "") -> str | None:
    # An unknown key is the last element of its loc, whatever its spelling ("Foo" is a field
    # the client sent, not a union member's class name).
    keep_last = error_type == "extra_forbidden"
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if p not in ("body", "query", "path")
        and not (isinstance(p, str) and _is_union_tag(p) and not (keep_last and i == len(loc) - 1))
    ]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"Malformed JSON body: {err.get('ctx', {}).get('error', 'could not parse')}"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if kind == "missing":
        return f"Missing required parameter: '{param}'"
    if param:
        return f"Invalid value for '{param}': {err.get('msg', 'invalid')}"
    return str(err.get("msg", "Invalid request body"))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that make every failure an OpenAI-shaped response."""

    @app.exception_handler(ArchonError)
    async def _archon(_: Request, exc: ArchonError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param_from_loc(tuple(first.get("loc", ())), first.get("type", ""))
        if first.get("type") == "json_invalid":
            param = None
        return JSONResponse(
            error_body(_validation_message(first, param), "invalid_request_error", param),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), error_type), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug of ours, not the client's: keep the shape, hide the traceback from the client.
        logging.getLogger("archon").exception("unhandled error")
        return JSONResponse(error_body("Internal server error", "internal_error"), status_code=500)
