"""Relaying a model server's stream to the client: as it comes, through a metered key's usage
meter, or event by event through the answer's shaping (archon.agent.shaping: the lead quote,
the sources on the last chunk); a broken stream ends with an error event and [DONE]."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp

from archon.agent.exchange import Exchange
from archon.agent.limits import StreamMeter
from archon.agent.metrics import AgentMetrics
from archon.agent.preparation import Prepared
from archon.agent.shaping import StreamShaper
from archon.agent.upstreams import Lease
from archon.errors import error_body
from archon.openai.sse import DONE, sse_event

log = logging.getLogger("archon.agent")


class MidStreamFailure(Exception):
    pass


class Stream:
    """One relayed stream's upstream connection and its exchange, ended exactly once."""

    def __init__(self, resp: aiohttp.ClientResponse, lease: Lease, exchange: Exchange):
        self.resp, self.lease, self.exchange = resp, lease, exchange
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
        self.exchange.end(200, estimate=True)


class Relay:
    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    async def relay(self, stream: Stream, prepared: Prepared) -> AsyncIterator[bytes]:
        resp, up = stream.resp, stream.lease.upstream
        grant, began = stream.exchange.grant, stream.exchange.began
        meter = grant.meter if grant is not None else None
        finished = False
        try:
            if prepared.shaping.active:
                shaper = StreamShaper(prepared.shaping, prepared.include_usage)
                events = self._shaped(resp, shaper, began, meter)
            elif meter is not None:
                events = self._metered(resp, began, meter)
            else:
                events = self._pass_through(resp, began)
            async for chunk in events:
                yield chunk
            finished = True
        except (TimeoutError, aiohttp.ClientError, MidStreamFailure) as exc:
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
            raise MidStreamFailure("the stream ended without [DONE]")

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
            raise MidStreamFailure("the stream ended without [DONE]")

    async def _shaped(
        self,
        resp: aiohttp.ClientResponse,
        shaper: StreamShaper,
        began: float,
        meter: StreamMeter | None = None,
    ) -> AsyncIterator[bytes]:
        """Relay event by event through ``shaper`` (archon.agent.shaping): an event it changed
        is re-serialised, any other passes as it came."""
        first = True
        dropped = False
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
            if payload == b"[DONE]":
                closing = shaper.closing()
                if closing is not None:
                    yield sse_event(closing)
                yield DONE
                return
            if meter is not None and meter.drop(payload):
                dropped = True
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                yield line
                continue
            if isinstance(event, dict) and shaper.feed(event):
                yield sse_event(event)[:-1]  # the upstream's blank line ends the event
            else:
                yield line
        raise MidStreamFailure("the stream ended without [DONE]")
