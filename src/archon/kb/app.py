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
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from archon import __version__
from archon.errors import (
    ConfigError,
    ServiceUnavailableError,
    SyncInProgressError,
    install_error_handlers,
)
from archon.http import BodyLimitMiddleware, parse_json_body
from archon.kb.query import QueryRequest
from archon.kb.service import KnowledgeBase
from archon.settings import KnowledgeBaseSettings

log = logging.getLogger("archon.kb")


class _StateGauges(Collector):
    def __init__(self, kb: Callable[[], KnowledgeBase | None]):
        self._kb = kb

    def collect(self) -> Any:
        kb = self._kb()
        chunks = GaugeMetricFamily("archon_kb_chunks", "Chunks in the store.", labels=["source"])
        last = GaugeMetricFamily(
            "archon_kb_last_successful_sync_timestamp_seconds",
            "When each source last synced without error.",
            labels=["source"],
        )
        if kb is not None:
            for row in kb.sources_summary():
                chunks.add_metric([row["name"]], float(row["chunks"]))
                if row["last_success"]:
                    last.add_metric([row["name"]], float(row["last_success"]))
        yield chunks
        yield last


def create_app(
    settings: KnowledgeBaseSettings,
    factory: Callable[[KnowledgeBaseSettings], KnowledgeBase] = KnowledgeBase,
) -> FastAPI:
    holder: dict[str, Any] = {"kb": None, "error": None}
    disable_created_metrics()
    registry = CollectorRegistry()
    query_seconds = Histogram(
        "archon_kb_query_seconds",
        "Query latency, embedding included.",
        ["mode"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )
    sync_errors = Counter(
        "archon_kb_sync_errors", "Sources that failed to sync.", ["source"], registry=registry
    )
    rerank_total = Counter(
        "archon_kb_rerank",
        "Queries sent to the reranker, by outcome (used, timeout, failed: fused order kept).",
        ["outcome"],
        registry=registry,
    )
    registry.register(_StateGauges(lambda: holder["kb"]))
    stop = threading.Event()

    def run_sync() -> None:
        kb: KnowledgeBase = holder["kb"]
        try:
            report = kb.sync()
        except SyncInProgressError:
            log.info("sync skipped: one is already running")
            return
        gc.freeze()  # the rebuilt index too (see load_and_schedule)
        for source in report.sources:
            if source.error:
                sync_errors.labels(source.name).inc()
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
        try:
            kb = factory(settings)
            set_threads = getattr(kb.embedder, "set_threads", None)
            if set_threads is not None:
                set_threads(settings.serve_threads)
            if kb.reranker is not None:
                kb.reranker.on_outcome = lambda outcome: rerank_total.labels(outcome).inc()
            kb.warm()
            # The index holds tens of thousands of long-lived objects: keep the garbage
            # collector from rescanning them on every full collection (query latency spikes).
            gc.freeze()
            holder["kb"] = kb
        except ConfigError as exc:
            holder["error"] = str(exc)
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
            if holder["kb"] is not None:
                holder["kb"].close()

    app = FastAPI(title="Archon knowledge base", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)

    def require() -> KnowledgeBase:
        if holder["kb"] is None:
            raise ServiceUnavailableError(
                holder["error"] or "the knowledge base is still loading", code="kb_loading"
            )
        return holder["kb"]

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if holder["kb"] is None:
            return JSONResponse({"status": "loading", "error": holder["error"]}, status_code=503)
        return JSONResponse({"status": "ready", "syncing": holder["kb"].syncing})

    @app.post("/query")
    async def query(request: Request) -> JSONResponse:
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
        )
        elapsed = time.perf_counter() - began
        query_seconds.labels(body.mode).observe(elapsed)
        result: dict[str, Any] = {"chunks": chunks, "took_ms": round(1000 * elapsed, 1)}
        if not chunks:
            result["message"] = (
                f"no chunk scored at or above score_threshold {body.score_threshold}"
                if body.score_threshold is not None
                else "no chunk matched the query and filters"
            )
        return JSONResponse(result)

    @app.get("/sources")
    async def sources() -> dict[str, Any]:
        return {"sources": require().sources_summary()}

    @app.post("/sync")
    async def sync() -> JSONResponse:
        kb = require()
        if kb.syncing:
            return JSONResponse({"status": "already running"}, status_code=409)
        threading.Thread(target=run_sync, name="kb-sync", daemon=True).start()
        return JSONResponse({"status": "started"}, status_code=202)

    @app.get("/sync")
    async def sync_status() -> dict[str, Any]:
        kb = require()
        return {"running": kb.syncing, "last": kb.report_dict()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
