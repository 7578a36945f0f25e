"""Relaying a model server's stream to the client: as it comes, through a metered key's usage
meter, or event by event to attach the sources to the last chunk; a broken stream ends with an
error event and [DONE]."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from archon.agent.limits import Grant, StreamMeter
from archon.agent.metrics import AgentMetrics
from archon.agent.preparation import Prepared
from archon.agent.rag import mark_cited
from archon.agent.upstreams import Lease
from archon.errors import error_body
from archon.openai.sse import DONE, sse_event

log = logging.getLogger("archon.agent")


class MidStreamFailure(Exception):
    pass


class Stream:
    """One relayed stream's upstream connection and bookkeeping, ended exactly once."""

    def __init__(
        self,
        metrics: AgentMetrics,
        resp: aiohttp.ClientResponse,
        lease: Lease,
        route: str,
        began: float,
        grant: Grant | None = None,
    ):
        self.metrics, self.resp, self.lease = metrics, resp, lease
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
        self.metrics.observe(self.route, 200, self.began)
        if self.grant is not None:
            self.grant.finish(200, estimate=True)


class Relay:
    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    async def relay(self, stream: Stream, prepared: Prepared) -> AsyncIterator[bytes]:
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
        led: set[Any] = set()  # the choices whose answer already starts with prepared.lead
        held: dict[Any, str] = {}  # per choice, a "[5" that may be the start of an echo
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
            rewritten = prepared.lead is not None and lead_choices(choices, prepared.lead, led)
            if prepared.echo_stops:
                rewritten = hold_echo_starts(choices, held) or rewritten
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
            elif rewritten:
                yield sse_event(event)[:-1]
            else:
                yield line
        raise MidStreamFailure("the stream ended without [DONE]")


def lead_choices(choices: list[Any], lead: str, led: set[Any]) -> bool:
    """Put ``lead`` before the first delta of each choice not yet led; True if any changed."""
    changed = False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) in led:
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        led.add(choice.get("index", 0))
        delta["content"] = lead + str(delta.get("content") or "")
        changed = True
    return changed


_ECHO_START = re.compile(r"\[\d{0,3}$")  # what an echoed "[5] archon: " leaves before its stop


def hold_echo_starts(choices: list[Any], held: dict[Any, str]) -> bool:
    """Hold back a delta's trailing ``[`` or ``[5`` until the next one shows what it was: the
    start of a citation goes on with it; the start of an excerpt header copied by the model
    ends in the agent's stop sequence (archon.agent.rag.echo_stops), and is dropped."""
    changed = False
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("delta"), dict):
            continue
        index, delta = choice.get("index", 0), choice["delta"]
        content = held.pop(index, "") + str(delta.get("content") or "")
        finish = choice.get("finish_reason")
        match = _ECHO_START.search(content)
        if match and finish is None:
            held[index] = match.group()
            content = content[: match.start()]
        elif match and finish == "stop":
            content = content[: match.start()]
        if content != (delta.get("content") or ""):
            delta["content"] = content
            changed = True
    return changed


def trim_echo_start(text: str) -> str:
    """A whole answer without the ``[5`` an echoed excerpt header left before its stop."""
    return _ECHO_START.sub("", text)
