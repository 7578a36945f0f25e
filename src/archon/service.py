"""What every Archon service is built from: one app builder and one startup lifecycle.

`service_app` gives a FastAPI app the body limit, the OpenAI-shaped error handlers, `/health`,
`/ready` and a `/metrics` route over the service's own registry (one registry per app, so two
apps in one process, as in tests, never share counters). `Lifecycle` is the typed state of
whatever a service loads after it starts listening (the model, the knowledge base's store and
index, the agent's upstream session): starting → (downloading →) loading → ready, or failed
with the reason that /ready (or the model server's /health) reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

from archon import __version__
from archon.errors import ServiceUnavailableError, install_error_handlers
from archon.http import BodyLimitMiddleware

T = TypeVar("T")
Phase = Literal["starting", "downloading", "loading", "ready", "failed"]


@dataclass
class Lifecycle(Generic[T]):
    """The loaded part of a service, and where its loading stands."""

    phase: Phase = "starting"
    progress: str | None = None
    error: str | None = None
    value: T | None = None

    def downloading(self, progress: str | None = None) -> None:
        self.phase, self.progress = "downloading", progress

    def loading(self, progress: str | None = None) -> None:
        self.phase, self.progress = "loading", progress

    def ready(self, value: T) -> None:
        self.phase, self.value, self.error = "ready", value, None

    def failed(self, error: str) -> None:
        self.phase, self.error = "failed", error

    @property
    def is_ready(self) -> bool:
        return self.phase == "ready"

    def require(self, loading_message: str, code: str) -> T:
        """The loaded value, or the 503 a request gets while there is none."""
        if self.value is None:
            raise ServiceUnavailableError(self.error or loading_message, code=code)
        return self.value

    def status(self) -> dict[str, Any]:
        return {"status": self.phase, "progress": self.progress, "error": self.error}


def new_registry() -> CollectorRegistry:
    # The *_created series double every counter's cardinality and no dashboard reads them.
    disable_created_metrics()
    return CollectorRegistry()


def service_app(
    title: str,
    *,
    registry: CollectorRegistry,
    max_request_bytes: int,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    ready: Callable[[], Awaitable[Response]] | None = None,
    health: Callable[[], Awaitable[Response]] | None = None,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The app with the body limit, error handlers, `/health` (``health``, by default alive
    while the process serves), `/ready` (when the service has a ``ready``) and `/metrics`.
    `before_scrape` refreshes what a collector cannot read synchronously (the agent's budgets
    live in Redis)."""
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    install_error_handlers(app)

    async def liveness() -> Response:
        return JSONResponse({"status": "ok"})

    app.add_api_route("/health", health or liveness, methods=["GET"])
    if ready is not None:
        app.add_api_route("/ready", ready, methods=["GET"])

    @app.get("/metrics")
    async def metrics() -> Response:
        if before_scrape is not None:
            await before_scrape()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
