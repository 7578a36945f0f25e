"""Forwarding to the model servers: retrieval, failover before the first byte, stream relay.

The hot path stays lean on purpose (the agent should add well under a millisecond): the body
is parsed once, re-serialised only when it changed, and a stream without sources to attach is
relayed chunk by chunk without parsing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archon.agent.admission import HEADER as PRIORITY_HEADER
from archon.agent.admission import Admission, Priority, priority_of
from archon.agent.auth import ApiKey
from archon.agent.generation import apply_generation
from archon.agent.limits import Grant, Limiter, StreamMeter, usage_of
from archon.agent.metrics import AgentMetrics
from archon.agent.rag import (
    ArchonOptions,
    KnowledgeBaseClient,
    Outcome,
    RetrievalError,
    augment,
    conversation_key,
    mark_cited,
    retrieval_query,
)
from archon.agent.upstreams import Lease, UpstreamPool
from archon.errors import (
    ArchonError,
    GatewayTimeoutError,
    InvalidRequestError,
    ServiceUnavailableError,
    error_body,
)
from archon.http import parse_json_object, run_unless_client_leaves
from archon.openai.sse import DONE, sse_event
from archon.settings import AgentSettings

log = logging.getLogger("archon.agent")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class _MidStreamFailure(Exception):
    pass


@dataclass
class Prepared:
    """A chat request after Archon's options and retrieval were applied."""

    body: bytes
    model: str | None
    stream: bool
    outcome: Outcome
    sources: list[dict[str, Any]] = field(default_factory=list)
    conversation: str | None = None
    include_usage: bool = False  # the client asked for the usage chunk
    grant: Grant | None = None  # a metered key's admission (archon.agent.limits)
    priority: Priority = "interactive"  # its class in the admission queue


class Gateway:
    def __init__(
        self,
        settings: AgentSettings,
        pool: UpstreamPool,
        kb: KnowledgeBaseClient | None,
        metrics: AgentMetrics,
        limits: Limiter | None = None,
        admission: Admission | None = None,
    ):
        self.settings = settings
        self.pool = pool
        self.admission = admission  # None: no agent queue (upstream_concurrency 0)
        self.kb = kb
        self.metrics = metrics
        self.limits = limits  # None: no key is metered, nothing to check or count
        self.session: aiohttp.ClientSession | None = None
        self.headers = {"content-type": "application/json", **pool.headers}
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.request_timeout
        )

    # -- requests -------------------------------------------------------------------------

    async def chat(self, request: Request, key: ApiKey | None = None) -> Response:
        began = time.perf_counter()
        priority = self.priority(request, key)
        raw = await request.body()
        prepared = await self.prepare_chat(raw, key)
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

    # -- chat preparation -----------------------------------------------------------------

    async def prepare_chat(self, raw: bytes, key: ApiKey | None = None) -> Prepared:
        data = parse_json_object(raw)
        changed = "archon" in data
        options = ArchonOptions.parse(data.pop("archon", None))
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError(
                "'messages' must be a non-empty list of messages", param="messages"
            )
        model = data.get("model")
        if model is None:
            # Convenience for curl users: with one model behind the agent, 'model' may be left out.
            model = self.pool.default_model()
            if model is not None:
                data["model"], changed = model, True
        stream = data.get("stream") is True
        stream_options = data.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        # Before the limits, so that they see the body the model server will get.
        changed |= apply_generation(self.settings.generation, data, key)
        grant = None
        if key is not None and key.metered and self.limits is not None:
            # Before retrieval: a refused request costs no knowledge-base query.
            grant = await self.limits.admit(key, data, stream, len(raw))
            changed |= grant.changed
        outcome: Outcome = "off"
        sources: list[dict[str, Any]] = []
        if options.rag and self.kb is not None:
            try:
                outcome, sources, augmented = await self._retrieve(options, messages)
            except BaseException:
                if grant is not None:
                    grant.finish(499)
                raise
            if augmented is not messages:
                data["messages"], changed = augmented, True
        self.metrics.rag.labels(outcome).inc()
        conversation = conversation_key(model, messages) if self.pool.affinity else None
        body = json.dumps(data, ensure_ascii=False).encode() if changed else raw
        return Prepared(
            body,
            model if isinstance(model, str) else None,
            stream,
            outcome,
            sources,
            conversation,
            include_usage,
            grant,
        )

    async def _retrieve(
        self, options: ArchonOptions, messages: list[Any]
    ) -> tuple[Outcome, list[dict[str, Any]], list[Any]]:
        assert self.kb is not None
        query = retrieval_query(messages, self.settings.history_turns)
        if not query:
            return "none", [], messages
        try:
            chunks, seconds = await self.kb.query(
                query, options.top_k or self.settings.top_k, options.filters
            )
        except RetrievalError:
            return "degraded", [], messages
        self.metrics.retrieval_seconds.observe(seconds)
        augmented, sources = augment(messages, chunks, self.settings.max_context_chars)
        return ("used" if sources else "none"), sources, augmented

    # -- forwarding -------------------------------------------------------------------------

    async def open(self, path: str, prepared: Prepared) -> tuple[aiohttp.ClientResponse, Lease]:
        """Send to the best upstream; on a connection error or a 503, try the next one.

        The returned lease holds the upstream's in-flight count until its owner releases it;
        every other way out of here releases it on the spot.
        """
        assert self.session is not None
        limit = 0
        if self.admission is not None:
            # Returns when a slot is free; the lease below is taken before any other await.
            await self.admission.enter(prepared.priority, prepared.model)
            limit = self.admission.policy.concurrency
        try:
            candidates = self.pool.candidates(prepared.model, prepared.conversation, limit)
        except ServiceUnavailableError:
            await self.pool.recheck_soon()
            candidates = self.pool.candidates(prepared.model, prepared.conversation, limit)
        failures: list[str] = []
        for up in candidates:
            with self.pool.lease(up) as lease:
                try:
                    resp = await self.session.post(
                        up.url + path,
                        data=prepared.body,
                        headers=self.headers,
                        timeout=self.timeout,
                    )
                    if resp.status != 503:
                        return resp, lease.detach()
                    try:
                        detail = (await resp.text())[:300].strip()
                    finally:
                        resp.release()
                except aiohttp.SocketTimeoutError:
                    self.metrics.upstream_errors.labels(up.url, "timeout").inc()
                    raise GatewayTimeoutError(
                        f"The model server {up.url} sent nothing within request_timeout "
                        f"({self.settings.request_timeout:g}s)"
                    ) from None
                except aiohttp.ClientError as exc:
                    # Refused, or connected but dropped before a whole answer (a crash, a
                    # restart, a 503 cut short): nothing reached the client yet, so another
                    # upstream may take it; the next health check tells whether this one is back.
                    self.metrics.upstream_errors.labels(up.url, "connect").inc()
                    self.pool.mark_failed(up, str(exc) or type(exc).__name__)
                    failures.append(f"{up.url}: {exc or type(exc).__name__}")
                    continue
                self.pool.mark_busy(up)
                self.metrics.upstream_errors.labels(up.url, "status").inc()
                failures.append(f"{up.url}: 503 {detail}")
        failures += [f"{up.url}: {up.error}" for up in self.pool.upstreams if up not in candidates]
        raise ServiceUnavailableError(
            "No model server could take the request (" + "; ".join(failures) + ")",
            code="no_healthy_upstream",
        )

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
            resp, lease = await self.open(path, prepared)  # a stream's headers come at once
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
            stream = _Stream(self, resp, lease, route, began, grant)
            try:
                return StreamingResponse(
                    self._relay(stream, prepared),
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
        self.observe(route, resp.status, began)
        if grant is not None:
            grant.finish(resp.status, usage_of(raw) if resp.status == 200 else None)
        content_type = resp.headers.get("content-type", "application/json")
        if resp.status != 200 or prepared.outcome == "off" or route != "chat":
            return Response(raw, status_code=resp.status, media_type=content_type, headers=headers)
        data = json.loads(raw)
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
        resp, lease = await self.open(path, prepared)
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
                self.metrics.upstream_errors.labels(up.url, "timeout").inc()
                raise GatewayTimeoutError(
                    f"The model server {up.url} did not finish within request_timeout "
                    f"({self.settings.request_timeout:g}s)"
                ) from None
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
        self.observe(route, 499, began)
        if grant is not None:
            grant.finish(499, estimate=True)
        return Response(status_code=499)

    async def _relay(self, stream: _Stream, prepared: Prepared) -> AsyncIterator[bytes]:
        resp, up = stream.resp, stream.lease.upstream
        meter = stream.grant.meter if stream.grant is not None else None
        finished = False
        try:
            if prepared.outcome != "off" and stream.route == "chat":
                events = self._attach_sources(resp, prepared, stream.began, meter)
            elif meter is not None:
                events = self._metered(resp, stream.began, meter)
            else:
                events = self._pass_through(resp, stream.began)
            async for chunk in events:
                yield chunk
            finished = True
        except (TimeoutError, aiohttp.ClientError, _MidStreamFailure) as exc:
            self.metrics.upstream_errors.labels(up.url, "midstream").inc()
            reason = str(exc) or type(exc).__name__
            log.warning("upstream %s failed mid-stream: %s", up.url, reason)
            yield sse_event(
                error_body(
                    f"The model server failed mid-answer ({reason}); the answer is incomplete",
                    "upstream_error",
                    code="upstream_failed",
                )
            )
            yield DONE
        finally:
            stream.end(finished)

    async def _pass_through(
        self, resp: aiohttp.ClientResponse, began: float
    ) -> AsyncIterator[bytes]:
        tail = b""
        first = True
        async for chunk in resp.content.iter_any():
            if first:
                self.metrics.ttft_seconds.observe(time.perf_counter() - began)
                first = False
            tail = (tail + chunk)[-32:]
            yield chunk
        if not tail.rstrip().endswith(b"[DONE]"):
            raise _MidStreamFailure("the stream ended without [DONE]")

    async def _metered(
        self, resp: aiohttp.ClientResponse, began: float, meter: StreamMeter
    ) -> AsyncIterator[bytes]:
        """Relay line by line for a metered key: the meter reads the usage chunk (and drops it
        when only the agent asked for it)."""
        first = True
        done = dropped = False
        async for line in resp.content:
            if dropped:
                dropped = False
                if not line.strip():
                    continue  # the blank line that ended the dropped event
            if line.startswith(b"data:"):
                if first:
                    self.metrics.ttft_seconds.observe(time.perf_counter() - began)
                    first = False
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                elif meter.drop(payload):
                    dropped = True
                    continue
            yield line
        if not done:
            raise _MidStreamFailure("the stream ended without [DONE]")

    async def _attach_sources(
        self,
        resp: aiohttp.ClientResponse,
        prepared: Prepared,
        began: float,
        meter: StreamMeter | None = None,
    ) -> AsyncIterator[bytes]:
        """Relay event by event, adding ``sources`` to the last chunk before [DONE]: the one
        with the finish_reason (or, with include_usage, the usage chunk after it)."""
        answer: list[str] = []
        attached = False
        first = True
        dropped = False
        template: dict[str, Any] = {}
        async for line in resp.content:
            if not line.startswith(b"data:"):
                if dropped and not line.strip():
                    dropped = False
                    continue  # the blank line that ended the dropped event
                yield line
                continue
            if first:
                self.metrics.ttft_seconds.observe(time.perf_counter() - began)
                first = False
            payload = line[5:].strip()
            if meter is not None and payload != b"[DONE]" and meter.drop(payload):
                dropped = True
                continue
            if payload == b"[DONE]":
                if not attached:
                    yield sse_event(
                        {
                            **template,
                            "choices": [],
                            "sources": mark_cited(prepared.sources, "".join(answer)),
                        }
                    )
                yield DONE
                return
            try:
                event = json.loads(payload)
            except ValueError:
                yield line
                continue
            if attached or not isinstance(event, dict) or "error" in event:
                yield line
                continue
            template = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
            choices = event.get("choices") or []
            for choice in choices:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    answer.append(content)
            last = (
                (not choices and event.get("usage") is not None)
                if prepared.include_usage
                else any(c.get("finish_reason") for c in choices)
            )
            if last:
                event["sources"] = mark_cited(prepared.sources, "".join(answer))
                attached = True
                yield sse_event(event)[:-1]  # the upstream's blank line ends the event
            else:
                yield line
        raise _MidStreamFailure("the stream ended without [DONE]")

    def observe(self, route: str, status: int, began: float) -> None:
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - began)
        self.metrics.requests.labels(route, str(status)).inc()

    def count_error(self, route: str, exc: ArchonError) -> None:
        self.metrics.requests.labels(route, str(exc.status_code)).inc()


class _Stream:
    """One relayed stream's upstream connection and bookkeeping, ended exactly once."""

    def __init__(
        self,
        gateway: Gateway,
        resp: aiohttp.ClientResponse,
        lease: Lease,
        route: str,
        began: float,
        grant: Grant | None = None,
    ):
        self.gateway, self.resp, self.lease = gateway, resp, lease
        self.route, self.began, self.grant = route, began, grant
        self.ended = False

    def end(self, finished: bool) -> None:
        if self.ended:
            return
        self.ended = True
        if finished:
            self.resp.release()
        else:
            self.resp.close()  # the client left or the upstream broke: stop the generation
        self.lease.release()
        self.gateway.observe(self.route, 200, self.began)
        if self.grant is not None:
            self.grant.finish(200, estimate=True)
