"""`create_app(settings)` for the agent: OpenAI API with retrieval, health, metrics, chat page."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from archon import __version__
from archon.agent.auth import KeyRing
from archon.agent.gateway import Gateway
from archon.agent.metrics import AgentMetrics
from archon.agent.rag import KnowledgeBaseClient
from archon.agent.upstreams import UpstreamPool
from archon.errors import ArchonError, install_error_handlers
from archon.http import BodyLimitMiddleware
from archon.settings import AgentSettings

log = logging.getLogger("archon.agent")

UI_DIR = Path(__file__).parent / "ui"


def create_app(settings: AgentSettings) -> FastAPI:
    """Build the agent. Raises ConfigError (before serving) for a bad keys file."""
    keys = KeyRing.load([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file)
    upstream_headers = (
        {"authorization": f"Bearer {settings.upstream_api_key.get_secret_value()}"}
        if settings.upstream_api_key
        else {}
    )
    pool = UpstreamPool(
        settings.upstreams,
        health_interval=settings.health_interval,
        check_timeout=settings.connect_timeout + 2.0,
        affinity=settings.affinity,
        headers=upstream_headers,
    )
    kb = (
        KnowledgeBaseClient(
            settings.kb_url,
            settings.kb_timeout,
            session=None,  # type: ignore[arg-type]  # set in lifespan, on the running loop
            retry_after=settings.health_interval,
        )
        if settings.kb_url
        else None
    )
    metrics = AgentMetrics(pool, kb)
    gateway = Gateway(settings, pool, kb, metrics)

    async def watch_kb() -> None:
        assert kb is not None
        while True:
            await kb.check()
            await asyncio.sleep(settings.health_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        gateway.session = session
        await pool.start(session)
        kb_task = None
        if kb is not None:
            kb.session = session
            kb_task = asyncio.create_task(watch_kb(), name="kb-health")
        for up in pool.upstreams:
            state = "healthy" if up.healthy else f"unhealthy ({up.error})"
            log.info("upstream %s: %s", up.url, state)
        # Everything loaded so far lives as long as the process: keep the cyclic collector from
        # rescanning it, which otherwise pauses requests for tens of milliseconds (p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if kb_task is not None:
                kb_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kb_task
            await pool.close()
            await session.close()

    app = FastAPI(title="Archon agent", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)

    def api(route: str) -> Callable[..., Any]:
        """Wrap an endpoint of the OpenAI API: authentication first, errors counted."""

        def wrap(handler: Callable[[Request], Awaitable[Any]]) -> Callable[..., Any]:
            async def endpoint(request: Request) -> Any:
                try:
                    keys.check(request.headers.get("authorization"))
                    return await handler(request)
                except ArchonError as exc:
                    gateway.count_error(route, exc)
                    raise

            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            return endpoint

        return wrap

    @app.post("/v1/chat/completions")
    @api("chat")
    async def chat_completions(request: Request) -> Response:
        """Chat with retrieval: context from the knowledge base, `sources` in the answer."""
        return await gateway.chat(request)

    @app.post("/v1/completions")
    @api("completions")
    async def completions(request: Request) -> Response:
        """Plain completions, passed through to a model server."""
        return await gateway.completions(request)

    @app.get("/v1/models")
    @api("models")
    async def models(request: Request) -> dict[str, Any]:
        """The models of the healthy model servers."""
        return await gateway.models()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        any_healthy = any(up.healthy for up in pool.upstreams)
        if kb is None:
            kb_state: dict[str, Any] = {"url": None, "status": "off"}
        else:
            status = "unknown" if kb.up is None else ("up" if kb.up else "down")
            kb_state = {"url": kb.url, "status": status, "error": kb.error}
        body = {
            "status": "ready" if any_healthy else "unavailable",
            "upstreams": pool.status(),
            "knowledge_base": kb_state,
            "auth": keys.enabled,
        }
        return JSONResponse(body, status_code=200 if any_healthy else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if (UI_DIR / "index.html").is_file():

        @app.get("/", include_in_schema=False)
        async def chat_page() -> FileResponse:
            return FileResponse(UI_DIR / "index.html")

        app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

    return app
