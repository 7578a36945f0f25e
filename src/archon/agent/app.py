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

from archon.agent import responses
from archon.agent.admission import make_admission
from archon.agent.auth import ApiKey, KeyRing
from archon.agent.gateway import Gateway
from archon.agent.limits import Limiter
from archon.agent.limits.report import describe_groups
from archon.agent.metrics import AgentMetrics
from archon.agent.rag import KnowledgeBaseClient
from archon.agent.routing import Router
from archon.agent.settings import AgentSettings
from archon.agent.upstreams import UpstreamPool
from archon.errors import ArchonError
from archon.service import Lifecycle, new_registry, service_app

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
        router=Router(settings.routing, settings.affinity),
    )
    # The one HTTP session to the model servers and the knowledge base: aiohttp binds it to
    # the running event loop, so it can only be opened in lifespan.
    http: Lifecycle[aiohttp.ClientSession] = Lifecycle()
    kb = (
        KnowledgeBaseClient(
            settings.kb_url,
            settings.kb_timeout,
            http=http,
            retry_after=settings.health_interval,
            token=settings.kb_service_token(),
        )
        if settings.kb_url
        else None
    )
    metrics = AgentMetrics(new_registry(), pool, kb)
    limiter: Limiter | None = None
    if keys.metered:
        limiter = Limiter.connect(
            settings.redis_url.get_secret_value() if settings.redis_url else None,
            metrics,
            pool,
            fail_closed=settings.limits_fail_closed,
        )
    elif settings.redis_url:
        log.info("redis_url is set but no key is named in the keys file: nothing to count")
    admission = make_admission(
        pool,
        settings.upstream_concurrency,
        settings.queue_size,
        {"interactive": settings.queue_timeout_interactive, "batch": settings.queue_timeout_batch},
        metrics,
    )
    if admission is not None:
        metrics.pool_gauges.queue_depth = admission.depth
    gateway = Gateway(settings, pool, http, kb, metrics, limiter, admission)

    async def watch_kb(kb: KnowledgeBaseClient) -> None:
        while True:
            await kb.check()
            await asyncio.sleep(settings.health_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        http.ready(session)
        await pool.start(session)
        if limiter is not None:
            await limiter.backend.start()
            log.info(
                "limits and usage of %d named key(s) kept in %s",
                len(keys.metered),
                limiter.backend.kind,
            )
        kb_task = None
        if kb is not None:
            kb_task = asyncio.create_task(watch_kb(kb), name="kb-health")
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
            if limiter is not None:
                await limiter.backend.close()
            await session.close()

    async def before_scrape() -> None:
        if limiter is not None:
            metrics.budgets = await limiter.budgets(keys.metered)

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

    app = service_app(
        "Archon agent",
        registry=metrics.registry,
        max_request_bytes=settings.max_request_bytes,
        lifespan=lifespan,
        ready=ready,
        before_scrape=before_scrape,
    )

    def api(route: str) -> Callable[..., Any]:
        """Wrap an endpoint of the OpenAI API: authentication first, errors counted."""

        def wrap(
            handler: Callable[[Request, ApiKey | None], Awaitable[Any]],
        ) -> Callable[..., Any]:
            async def endpoint(request: Request) -> Any:
                try:
                    key = keys.check(request.headers.get("authorization"))
                    return await handler(request, key)
                except ArchonError as exc:
                    gateway.count_error(route, exc)
                    raise

            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            return endpoint

        return wrap

    @app.post("/v1/chat/completions")
    @api("chat")
    async def chat_completions(request: Request, key: ApiKey | None) -> Response:
        """Chat with retrieval: context from the knowledge base, `sources` in the answer."""
        return await gateway.chat(request, key)

    @app.post("/v1/responses")
    @api("responses")
    async def create_response(request: Request, key: ApiKey | None) -> Response:
        """The Responses API over the chat path: retrieval, limits and routing as for chat."""
        return await responses.create_response(gateway, request, key)

    @app.post("/v1/completions")
    @api("completions")
    async def completions(request: Request, key: ApiKey | None) -> Response:
        """Plain completions, passed through to a model server."""
        return await gateway.completions(request, key)

    @app.post("/v1/embeddings")
    @api("embeddings")
    async def embeddings(request: Request, key: ApiKey | None) -> Response:
        """Embeddings from the model server that serves the model named (no retrieval)."""
        return await gateway.embeddings(request, key)

    @app.get("/v1/models")
    @api("models")
    async def models(_: Request, key: ApiKey | None) -> dict[str, Any]:
        """The models of the healthy model servers (those the key may use)."""
        return await gateway.models(key)

    @app.get("/v1/usage")
    @api("usage")
    async def usage(_: Request, key: ApiKey | None) -> dict[str, Any]:
        """Usage and limits of the named keys: an admin key sees every key, another its own."""
        if limiter is None or key is None:
            visible: tuple[ApiKey, ...] = ()
        elif key.admin:
            visible = keys.metered
        else:
            visible = (key,) if key.metered else ()
        data = await limiter.report(visible) if limiter is not None else []
        return {
            "object": "list",
            "backend": limiter.backend.kind if limiter is not None else None,
            "data": data,
            "groups": describe_groups(data),  # per group, over the keys listed in data
        }

    if (UI_DIR / "index.html").is_file():

        @app.get("/", include_in_schema=False)
        async def chat_page() -> FileResponse:
            return FileResponse(UI_DIR / "index.html")

        app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

    return app
