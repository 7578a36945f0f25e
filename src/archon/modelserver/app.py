"""``create_app(settings)``: the OpenAI-compatible model server as a FastAPI app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from archon.errors import ConfigError
from archon.http import parse_json_body, run_unless_client_leaves
from archon.modelserver import embeddings, models, responses, tokenization
from archon.modelserver.metrics import ModelServerMetrics
from archon.modelserver.preparation import Prepared, RequestPreparer
from archon.modelserver.runtime import EngineFactory, ModelRuntime, llamacpp_factory
from archon.modelserver.schemas import ChatCompletionRequest, CompletionRequest
from archon.modelserver.serving import CompletionService
from archon.modelserver.settings import ModelServerSettings
from archon.openai.sse import SSE_HEADERS
from archon.service import new_registry, service_app


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
    metrics = ModelServerMetrics(new_registry(), served_name, runtime.stats)
    preparer = RequestPreparer(runtime)
    service = CompletionService(runtime, metrics)
    embedders = embeddings.build_service(
        settings, model.path, served_name, guard=runtime.require_engine
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            embedders.close()
            runtime.close()

    async def before_scrape() -> None:
        metrics.model_ready.labels(served_name).set(1.0 if runtime.health().ready else 0.0)
        progress = runtime.progress
        if progress is not None and progress.fraction is not None:
            metrics.download_progress.labels(served_name).set(progress.fraction)
        elif runtime.phase == "ready":
            metrics.download_progress.labels(served_name).set(1.0)

    async def health() -> JSONResponse:
        # vLLM's contract: /health is 200 only once the model serves (no separate /ready).
        report = runtime.health()
        return JSONResponse(report.body, status_code=200 if report.ready else 503)

    app = service_app(
        "Archon model server",
        registry=metrics.registry,
        max_request_bytes=settings.max_request_bytes,
        lifespan=lifespan,
        health=health,
        before_scrape=before_scrape,
    )
    app.state.runtime = runtime

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
        more = [{**c, "created": card["created"]} for c in embedders.cards(served_name)]
        return {"object": "list", "data": [card, *more]}

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

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await responses.create_response(request, preparer, service)

    @app.post("/v1/embeddings")
    async def create_embeddings(request: Request) -> dict[str, Any]:
        body = await parse_json_body(request, embeddings.EmbeddingRequest)
        return await embedders.create(body)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await parse_json_body(request, tokenization.TokenizeRequest)
        return await tokenization.tokenize(body, runtime.require_engine(), served_name)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return tokenization.tokenizer_info(runtime.require_engine())

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await parse_json_body(request, tokenization.DetokenizeRequest)
        return tokenization.detokenize(body, runtime.require_engine(), served_name)

    return app
