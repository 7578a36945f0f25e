"""``create_app(settings)``: the OpenAI-compatible model server as a FastAPI app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from archon import __version__
from archon.errors import ConfigError, install_error_handlers
from archon.http import BodyLimitMiddleware, parse_json_body, run_unless_client_leaves
from archon.modelserver import models, tokenization
from archon.modelserver.metrics import ModelServerMetrics
from archon.modelserver.preparation import Prepared, RequestPreparer
from archon.modelserver.runtime import EngineFactory, ModelRuntime, llamacpp_factory
from archon.modelserver.schemas import ChatCompletionRequest, CompletionRequest
from archon.modelserver.serving import CompletionService
from archon.openai.sse import SSE_HEADERS
from archon.settings import ModelServerSettings


def create_app(
    settings: ModelServerSettings,
    model: models.ResolvedModel | None = None,
    *,
    engine_factory: EngineFactory = llamacpp_factory,
    on_fatal: Callable[[ConfigError], None] | None = None,
) -> FastAPI:
    """Build the model server. ``model`` defaults to resolving ``settings.llm_model``."""
    model = model or models.resolve(settings.llm_model)
    served_name = settings.served_model_name or model.default_name
    runtime = ModelRuntime(settings, model, served_name, engine_factory, on_fatal)
    metrics = ModelServerMetrics(served_name, runtime.stats)
    preparer = RequestPreparer(runtime)
    service = CompletionService(runtime, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.close()

    # The *_created series only add noise next to vLLM's metric set.
    disable_created_metrics()
    app = FastAPI(title="Archon model server", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        report = runtime.health()
        return JSONResponse(report.body, status_code=200 if report.ready else 503)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        engine = runtime.engine
        card = {
            "id": served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "archon",
            "root": model.reference,
            "max_model_len": engine.max_model_len if engine else settings.max_model_len,
            "ready": runtime.phase == "ready",
        }
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.model_ready.labels(served_name).set(1.0 if runtime.health().ready else 0.0)
        progress = runtime.progress
        if progress is not None and progress.fraction is not None:
            metrics.download_progress.labels(served_name).set(progress.fraction)
        elif runtime.phase == "ready":
            metrics.download_progress.labels(served_name).set(1.0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def respond(prepared: Prepared, request: Request) -> Response:
        if prepared.stream:
            # Starlette cancels the stream when the client disconnects; that aborts the request.
            return StreamingResponse(
                service.stream(prepared), media_type="text/event-stream", headers=SSE_HEADERS
            )
        result = await run_unless_client_leaves(request, service.complete(prepared))
        if result is None:
            # Nobody will read the answer: generating it was stopped, its slot is free.
            return Response(status_code=499)
        return JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await parse_json_body(request, ChatCompletionRequest)
        return await respond(await preparer.prepare_chat(body), request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await parse_json_body(request, CompletionRequest)
        return await respond(await preparer.prepare_completion(body), request)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await parse_json_body(request, tokenization.TokenizeRequest)
        return await tokenization.tokenize(body, runtime.require_engine(), served_name)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await parse_json_body(request, tokenization.DetokenizeRequest)
        return tokenization.detokenize(body, runtime.require_engine(), served_name)

    return app
