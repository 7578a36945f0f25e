"""Forwarding a request to the model servers: the steps in order, each in its own module.

`preparation.py` readies a chat, a completion or an embeddings request (options, generation
defaults, the key's limits, retrieval, what may be added to the answer); `failover.py` opens it
on the best upstream that takes it; a whole answer is read here and shaped by `shaping.py`, a
stream is relayed by `relay.py` (through the same shaping); `exchange.py` ends the request's
bookkeeping once.

The hot path stays lean on purpose (the agent should add well under a millisecond): the body
is parsed once, re-serialised only when it changed, and a stream without sources to attach is
relayed chunk by chunk without parsing.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archon.agent import audit
from archon.agent.admission import HEADER as PRIORITY_HEADER
from archon.agent.admission import Admission, Priority, priority_of
from archon.agent.auth import ApiKey
from archon.agent.exchange import Exchange, Route
from archon.agent.failover import Failover
from archon.agent.limits import Limiter, usage_of
from archon.agent.metrics import AgentMetrics
from archon.agent.preparation import ChatPreparer, Prepared
from archon.agent.rag import KnowledgeBaseClient
from archon.agent.relay import Relay, Stream
from archon.agent.settings import AgentSettings
from archon.agent.shaping import shape_answer
from archon.agent.upstreams import Lease, UpstreamPool
from archon.errors import ArchonError, ServiceUnavailableError
from archon.http import run_unless_client_leaves
from archon.openai.sse import SSE_HEADERS
from archon.service import Lifecycle

PATHS: dict[Route, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


class Gateway:
    def __init__(
        self,
        settings: AgentSettings,
        pool: UpstreamPool,
        http: Lifecycle[aiohttp.ClientSession],
        kb: KnowledgeBaseClient | None,
        metrics: AgentMetrics,
        limits: Limiter | None = None,
        admission: Admission | None = None,
    ):
        self.settings = settings
        self.pool = pool
        self.admission = admission  # None: no agent queue (upstream_concurrency 0)
        self.metrics = metrics
        self.limits = limits  # None: no key is metered, nothing to check or count
        self.preparer = ChatPreparer(settings, pool, kb, metrics, limits)
        self.failover = Failover(settings, pool, http, metrics, admission)
        self.relay = Relay(metrics)

    # -- requests -------------------------------------------------------------------------

    async def chat(
        self, request: Request, key: ApiKey | None = None, raw: bytes | None = None
    ) -> Response:
        """A chat completion: the request (its headers; a client that leaves cancels it), the
        caller's key, and the body (``raw``: one built by the caller, e.g. from a Responses
        request; None: the request's own) in; the client's response out."""
        return await self._handle(request, key, Exchange(self.metrics, "chat"), raw)

    async def completions(self, request: Request, key: ApiKey | None = None) -> Response:
        return await self._handle(request, key, Exchange(self.metrics, "completions"))

    async def embeddings(self, request: Request, key: ApiKey | None = None) -> Response:
        """Embeddings, sent to an upstream that serves the model: no retrieval, no generation
        defaults, a key's models and limits as for a chat."""
        return await self._handle(request, key, Exchange(self.metrics, "embeddings"))

    def priority(self, request: Request, key: ApiKey | None) -> Priority:
        if self.admission is None:
            return "interactive"  # nothing is queued: the class changes nothing
        return priority_of(
            key, request.headers.get(PRIORITY_HEADER), self.settings.default_priority
        )

    async def models(self, key: ApiKey | None = None) -> dict[str, Any]:
        healthy = [up for up in self.pool.upstreams if up.healthy]
        if not healthy:
            await self.pool.recheck_soon()
            healthy = [up for up in self.pool.upstreams if up.healthy]
        if not healthy:
            raise ServiceUnavailableError(
                self.pool.no_upstream_message(), code="no_healthy_upstream"
            )
        # The health checks refresh each upstream's models every health_interval.
        cards = self.pool.known_models()
        if key is not None and key.models is not None:
            cards = [c for c in cards if key.may_use(str(c.get("id")))]
        return {"object": "list", "data": cards}

    async def _handle(
        self, request: Request, key: ApiKey | None, exchange: Exchange, raw: bytes | None = None
    ) -> Response:
        """Prepare, send and answer one request; its exchange (and with it a metered key's
        grant) is ended here, or by the relayed stream when there is one."""
        priority = self.priority(request, key)
        if raw is None:
            raw = await request.body()
        try:
            if exchange.route == "embeddings":
                prepared = await self.preparer.prepare_embeddings(raw, exchange, key, priority)
            else:
                prepared = await self.preparer.prepare(raw, exchange, key, priority)
            response = await self._send(request, PATHS[exchange.route], prepared, exchange)
            audit.answered(
                exchange.route,
                key,
                response.status_code,
                prepared.outcome,
                prepared.shaping.sources if prepared.shaping.active else [],
            )
            return response
        except ArchonError as exc:
            exchange.fail(exc.status_code)
            if exchange.grant is not None:
                exc.headers = {**exchange.grant.headers, **(exc.headers or {})}
            raise
        except BaseException:
            exchange.fail(499)
            raise

    async def _send(
        self, request: Request, path: str, prepared: Prepared, exchange: Exchange
    ) -> Response:
        raw: bytes | None = None
        if prepared.stream and self.admission is None:
            # A stream's headers come at once.
            resp, lease = await self.failover.open(path, prepared)
        else:
            # A non-streamed answer's headers come only with the whole answer, and a queued
            # request may wait long: from the start, a client that leaves cancels it all (the
            # lease goes back, the upstream connection closes, the model server stops).
            done = await run_unless_client_leaves(request, self._open_and_read(path, prepared))
            if done is None:
                return self._client_left(exchange)
            resp, lease, raw = done
        up = lease.upstream
        headers = {"x-archon-rag": prepared.outcome, "x-archon-upstream": str(up.number)}
        if exchange.grant is not None:
            headers.update(exchange.grant.headers)
        if prepared.stream and resp.status == 200:
            stream = Stream(resp, lease, exchange)
            try:
                return StreamingResponse(
                    self.relay.relay(stream, prepared),
                    media_type="text/event-stream",
                    headers={**SSE_HEADERS, **headers},
                    # Runs even when the client left before the first chunk, when the generator
                    # above never started and so never reached its own cleanup.
                    background=BackgroundTask(stream.end, False),
                )
            except BaseException:
                stream.end(False)
                raise
        if raw is None:  # a stream refused with an error status: read that error
            raw = await run_unless_client_leaves(request, self._read(resp, lease))
            if raw is None:
                return self._client_left(exchange)
        exchange.end(resp.status, usage_of(raw) if resp.status == 200 else None)
        content_type = resp.headers.get("content-type", "application/json")
        if resp.status != 200 or not prepared.shaping.active:
            return Response(raw, status_code=resp.status, media_type=content_type, headers=headers)
        return Response(
            json.dumps(
                shape_answer(json.loads(raw), prepared.shaping), ensure_ascii=False
            ).encode(),
            media_type="application/json",
            headers=headers,
        )

    async def _open_and_read(
        self, path: str, prepared: Prepared
    ) -> tuple[aiohttp.ClientResponse, Lease, bytes | None]:
        """Open, and read the whole answer unless it is a stream to relay (then None)."""
        resp, lease = await self.failover.open(path, prepared)
        if prepared.stream and resp.status == 200:
            return resp, lease, None
        return resp, lease, await self._read(resp, lease)

    async def _read(self, resp: aiohttp.ClientResponse, lease: Lease) -> bytes:
        """The whole answer; the lease is released whatever happens."""
        up = lease.upstream
        with lease:
            try:
                raw = await resp.read()
            except aiohttp.SocketTimeoutError:  # a ClientError too: it goes first
                resp.close()
                raise self.failover.timed_out(up, "did not finish") from None
            except aiohttp.ClientError as exc:
                resp.close()
                self.metrics.upstream_errors.labels(up.url, "midstream").inc()
                raise ServiceUnavailableError(
                    f"The model server {up.url} failed while answering: {exc}",
                    code="upstream_failed",
                ) from None
            except BaseException:  # cancelled: the client left; the model server stops too
                resp.close()
                raise
        resp.release()
        return raw

    def _client_left(self, exchange: Exchange) -> Response:
        exchange.end(499, estimate=True)
        return Response(status_code=499)

    def count_error(self, route: str, exc: ArchonError) -> None:
        self.metrics.requests.labels(route, str(exc.status_code)).inc()
