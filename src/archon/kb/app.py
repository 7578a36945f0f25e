"""`create_app(settings)` for the knowledge base: /query, /sources, /sync, health and metrics.

The service owns the store: scheduled syncs and `POST /sync` run inside it, so an embedded
(local-path) Qdrant is never opened by two processes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from archon.errors import ConfigError, SyncInProgressError
from archon.http import parse_json_body
from archon.kb.access import GROUPS_HEADER, check_token, parse_groups_header
from archon.kb.metrics import KbMetrics
from archon.kb.query import QueryRequest
from archon.kb.service import KnowledgeBase
from archon.kb.settings import KnowledgeBaseSettings
from archon.service import Lifecycle, new_registry, service_app

log = logging.getLogger("archon.kb")


def create_app(
    settings: KnowledgeBaseSettings,
    factory: Callable[[KnowledgeBaseSettings], KnowledgeBase] = KnowledgeBase,
) -> FastAPI:
    token = settings.token()  # read before serving: a missing Secret file stops the start
    state: Lifecycle[KnowledgeBase] = Lifecycle()
    registry = new_registry()
    metrics = KbMetrics(registry, lambda: state.value)
    stop = threading.Event()

    def run_sync() -> None:
        kb = state.require("the knowledge base is still loading", "kb_loading")
        try:
            report = kb.sync()
        except SyncInProgressError:
            log.info("sync skipped: one is already running")
            return
        gc.freeze()  # the rebuilt index too (see load_and_schedule)
        for source in report.sources:
            if source.error:
                metrics.sync_errors.labels(source.name).inc()
        log.info(
            "sync finished in %.1fs: %s",
            report.seconds,
            ", ".join(
                f"{s.name} +{s.added} ~{s.changed} -{s.deleted}"
                + (f" ERROR {s.error}" if s.error else "")
                for s in report.sources
            ),
        )

    def load_and_schedule() -> None:
        state.loading("opening the store and loading the embedding model")
        try:
            kb = factory(settings)
            set_threads = getattr(kb.embedder, "set_threads", None)
            if set_threads is not None:
                set_threads(settings.serve_threads)
            if kb.reranker is not None:
                kb.reranker.on_outcome = lambda outcome: metrics.rerank_total.labels(outcome).inc()
            kb.warm()
            # The index holds tens of thousands of long-lived objects: keep the garbage
            # collector from rescanning them on every full collection (query latency spikes).
            gc.freeze()
            state.ready(kb)
        except ConfigError as exc:
            state.failed(str(exc))
            log.error("%s", exc)
            return
        if not settings.sync_interval:
            return
        wait = 0.0  # the first sync at start, then every sync_interval
        while not stop.wait(wait):
            wait = settings.sync_interval
            try:
                run_sync()
            except ConfigError as exc:
                log.error("scheduled sync: %s", exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=load_and_schedule, name="kb-loader", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            if state.value is not None:
                state.value.close()

    async def ready() -> JSONResponse:
        if state.value is None:
            return JSONResponse({"status": "loading", "error": state.error}, status_code=503)
        return JSONResponse({"status": "ready", "syncing": state.value.syncing})

    app = service_app(
        "Archon knowledge base",
        registry=registry,
        max_request_bytes=settings.max_request_bytes,
        lifespan=lifespan,
        ready=ready,
    )

    def require() -> KnowledgeBase:
        return state.require("the knowledge base is still loading", "kb_loading")

    def authorized(request: Request) -> None:
        """The data endpoints answer only the service token's holder, when one is set."""
        check_token(token, request.headers.get("authorization"))

    @app.post("/query")
    async def query(request: Request) -> JSONResponse:
        authorized(request)
        body = await parse_json_body(request, QueryRequest)
        kb = require()
        source = body.filters.source
        began = time.perf_counter()
        chunks = await asyncio.to_thread(
            kb.query,
            body.query,
            top_k=body.top_k or settings.default_top_k,
            mode=body.mode,
            sources=[source] if isinstance(source, str) else source,
            path_prefix=body.filters.path_prefix,
            score_threshold=body.score_threshold,
            fusion=body.fusion,
            dense_weight=body.dense_weight,
            groups=body.groups,
        )
        elapsed = time.perf_counter() - began
        metrics.query_seconds.labels(body.mode).observe(elapsed)
        result: dict[str, Any] = {"chunks": chunks, "took_ms": round(1000 * elapsed, 1)}
        if not chunks:
            result["message"] = (
                f"no chunk scored at or above score_threshold {body.score_threshold}"
                if body.score_threshold is not None
                else "no chunk matched the query and filters"
            )
        return JSONResponse(result)

    @app.get("/sources")
    async def sources(request: Request) -> dict[str, Any]:
        authorized(request)
        groups = parse_groups_header(request.headers.get(GROUPS_HEADER))
        return {"sources": require().sources_summary(groups)}

    @app.post("/sync")
    async def sync(request: Request) -> JSONResponse:
        authorized(request)
        kb = require()
        if kb.syncing:
            raise SyncInProgressError("a sync is already running", code="sync_in_progress")
        threading.Thread(target=run_sync, name="kb-sync", daemon=True).start()
        return JSONResponse({"status": "started"}, status_code=202)

    @app.get("/sync")
    async def sync_status(request: Request) -> dict[str, Any]:
        authorized(request)
        kb = require()
        return {"running": kb.syncing, "last": kb.report_dict()}

    return app
