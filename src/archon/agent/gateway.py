"""Forwarding a request to the model servers: the steps in order, each in its own module.

`preparation.py` readies a chat (options, generation defaults, the key's limits, retrieval);
`failover.py` opens it on the best upstream that takes it; a whole answer is read here (sources
added to a chat's), a stream is relayed by `relay.py`.

The hot path stays lean on purpose (the agent should add well under a millisecond): the body
is parsed once, re-serialised only when it changed, and a stream without sources to attach is
relayed chunk by chunk without parsing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archon.agent.admission import HEADER as PRIORITY_HEADER
from archon.agent.admission import Admission, Priority, priority_of
from archon.agent.auth import ApiKey
from archon.agent.failover import Failover
from archon.agent.limits import Grant, Limiter, usage_of
from archon.agent.metrics import AgentMetrics
from archon.agent.preparation import ChatPreparer, Prepared
from archon.agent.rag import KnowledgeBaseClient, mark_cited
from archon.agent.relay import Relay, Stream, trim_echo_start
from archon.agent.settings import AgentSettings
from archon.agent.upstreams import Lease, UpstreamPool
from archon.errors import ArchonError, ServiceUnavailableError
from archon.http import parse_json_object, run_unless_client_leaves
from archon.openai.sse import SSE_HEADERS
from archon.service import Lifecycle


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

    async def chat(self, request: Request, key: ApiKey | None = None) -> Response:
        began = time.perf_counter()
        priority = self.priority(request, key)
        raw = await request.body()
        prepared = await self.preparer.prepare(raw, key)
        prepared.priority = priority
        return await self._forward(request, "/v1/chat/completions", "chat", prepared, began)

    async def completions(self, request: Request, key: ApiKey | None = None) -> Response:
        began = time.perf_counter()
        priority = self.priority(request, key)
        raw = await request.body()
        data = parse_json_object(raw)
        model = data.get("model")
        stream = data.get("stream") is True
        grant = None
        if key is not None and key.metered and self.limits is not None:
            grant = await self.limits.admit(key, data, stream, len(raw))
            if grant.changed:
                raw = json.dumps(data, ensure_ascii=False).encode()
        prepared = Prepared(
            raw,
            model if isinstance(model, str) else None,
            stream,
            "off",
            grant=grant,
            priority=priority,
        )
        return await self._forward(request, "/v1/completions", "completions", prepared, began)

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

    async def _forward(
        self, request: Request, path: str, route: str, prepared: Prepared, began: float
    ) -> Response:
        grant = prepared.grant
        if grant is None:
            return await self._send(request, path, route, prepared, began)
        try:
            return await self._send(request, path, route, prepared, began)
        except ArchonError as exc:
            grant.finish(exc.status_code)
            exc.headers = {**grant.headers, **(exc.headers or {})}
            raise
        except BaseException:
            grant.finish(499)
            raise

    async def _send(
        self, request: Request, path: str, route: str, prepared: Prepared, began: float
    ) -> Response:
        grant = prepared.grant
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
                return self._client_left(route, began, grant)
            resp, lease, raw = done
        up = lease.upstream
        headers = {"x-archon-rag": prepared.outcome, "x-archon-upstream": str(up.number)}
        if grant is not None:
            headers.update(grant.headers)
        if prepared.stream and resp.status == 200:
            stream = Stream(self.metrics, resp, lease, route, began, grant)
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
                return self._client_left(route, began, grant)
        self.metrics.observe(route, resp.status, began)
        if grant is not None:
            grant.finish(resp.status, usage_of(raw) if resp.status == 200 else None)
        content_type = resp.headers.get("content-type", "application/json")
        if resp.status != 200 or prepared.outcome == "off" or route != "chat":
            return Response(raw, status_code=resp.status, media_type=content_type, headers=headers)
        data = json.loads(raw)
        for choice in data.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            content = str(message.get("content") or "")
            if prepared.echo_stops and choice.get("finish_reason") == "stop":
                content = trim_echo_start(content)
            if prepared.lead is not None:
                content = prepared.lead + content
            if content != (message.get("content") or ""):
                message["content"] = content
        answer = "".join(
            str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or []
        )
        data["sources"] = mark_cited(prepared.sources, answer)
        return Response(
            json.dumps(data, ensure_ascii=False).encode(),
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

    def _client_left(self, route: str, began: float, grant: Grant | None) -> Response:
        self.metrics.observe(route, 499, began)
        if grant is not None:
            grant.finish(499, estimate=True)
        return Response(status_code=499)

    def count_error(self, route: str, exc: ArchonError) -> None:
        self.metrics.requests.labels(route, str(exc.status_code)).inc()
