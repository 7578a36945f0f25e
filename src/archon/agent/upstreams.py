"""The model servers behind the agent: health checks, routing and failover.

Routing picks the least-busy healthy upstream that serves the requested model. With affinity on,
a conversation goes to the same upstream (its prefix cache already holds the earlier turns)
unless that upstream is clearly busier than the others (bounded load).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from archon.errors import ModelNotFoundError, ServiceUnavailableError

log = logging.getLogger("archon.agent")

# A conversation stays on its upstream until that one has this many more requests in flight
# than the least busy one.
AFFINITY_SLACK = 2
# After a 503 (a full queue, a model still loading) an upstream goes last for this long.
BUSY_BACKOFF = 1.0


@dataclass
class Upstream:
    url: str
    number: int  # 1-based position in the configured list (used in headers and logs)
    healthy: bool = False
    in_flight: int = 0  # open requests: changed only by the pool's leases
    models: tuple[str, ...] | None = None  # None: not known (the /v1/models call failed)
    model_cards: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = "not checked yet"
    busy_until: float = 0.0  # answered 503 (overloaded): others go first until then (mark_busy)

    def serves(self, model: str | None) -> bool:
        return model is None or self.models is None or model in self.models

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "models": list(self.models) if self.models is not None else None,
            "error": self.error,
        }


class Lease:
    """One request's claim on an upstream: counted in ``in_flight`` until released, exactly once.

    A ``with lease:`` block owns it: it releases on the way out, whatever happened, unless
    ``detach()`` handed it on to whoever reads the answer (who enters its own ``with lease:``,
    or, for a stream, calls ``release()`` when the stream ends).
    """

    __slots__ = ("_held", "_kept", "upstream")

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self._held = True
        self._kept = False
        upstream.in_flight += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self.upstream.in_flight -= 1

    def detach(self) -> Lease:
        """Keep the lease past the ``with`` block; the new owner calls ``release()``."""
        self._kept = True
        return self

    def __enter__(self) -> Lease:
        self._kept = False
        return self

    def __exit__(self, *_: object) -> None:
        if not self._kept:
            self.release()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class UpstreamPool:
    def __init__(
        self,
        urls: list[str],
        *,
        health_interval: float,
        check_timeout: float,
        affinity: bool,
        headers: dict[str, str] | None = None,
    ):
        self.upstreams = [Upstream(url, n) for n, url in enumerate(urls, start=1)]
        self.health_interval = health_interval
        self.check_timeout = check_timeout
        self.affinity = affinity
        self.headers = headers or {}
        self._rotation = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._last_recheck = 0.0

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        await self.check_all()
        self._loop_task = asyncio.create_task(self._loop(), name="upstream-health")

    async def close(self) -> None:
        for task in (self._loop_task, self._recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self.check_all()
            except Exception:  # keep checking whatever happened in one round
                log.exception("upstream health check round failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(up) for up in self.upstreams))

    async def check(self, up: Upstream) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.check_timeout)
        was = up.healthy
        try:
            async with self._session.get(
                up.url + "/health", timeout=timeout, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200].strip()
                    raise RuntimeError(f"/health answered {resp.status} {detail}")
            up.models, up.model_cards = await self._models(up, timeout)
            up.healthy, up.error = True, None
        except Exception as exc:
            up.healthy, up.error = False, _describe(exc)
        if was != up.healthy:
            if up.healthy:
                log.info("upstream %s is healthy (models: %s)", up.url, up.models)
            else:
                log.warning("upstream %s is unhealthy: %s", up.url, up.error)

    async def _models(
        self, up: Upstream, timeout: aiohttp.ClientTimeout
    ) -> tuple[tuple[str, ...] | None, list[dict[str, Any]]]:
        assert self._session is not None
        try:
            async with self._session.get(
                up.url + "/v1/models", timeout=timeout, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    return None, []
                cards = (await resp.json(content_type=None)).get("data") or []
                return tuple(str(c.get("id")) for c in cards), cards
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return None, []

    def lease(self, up: Upstream) -> Lease:
        """Count a request on ``up`` until the lease is released (see Lease)."""
        return Lease(up)

    def mark_busy(self, up: Upstream) -> None:
        """``up`` answered 503 (a full queue, a model still loading): others go first a while."""
        up.busy_until = time.monotonic() + BUSY_BACKOFF

    def mark_failed(self, up: Upstream, error: str) -> None:
        if up.healthy:
            log.warning("upstream %s failed: %s", up.url, error)
        up.healthy, up.error = False, error

    async def recheck_soon(self) -> None:
        """Re-check every upstream now (at most once a second): all of them looked down."""
        if self._recheck is None or self._recheck.done():
            if time.monotonic() - self._last_recheck < 1.0:
                return
            self._last_recheck = time.monotonic()
            self._recheck = asyncio.create_task(self.check_all())
        await asyncio.shield(self._recheck)

    def known_models(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for up in self.upstreams:
            if up.healthy:
                for card in up.model_cards:
                    seen.setdefault(str(card.get("id")), card)
        return list(seen.values())

    def default_model(self) -> str | None:
        names = {m for up in self.upstreams if up.healthy for m in (up.models or ())}
        return next(iter(names)) if len(names) == 1 else None

    def candidates(self, model: str | None, conversation: str | None) -> list[Upstream]:
        """Healthy upstreams serving ``model``, in the order to try them."""
        healthy = [up for up in self.upstreams if up.healthy]
        if not healthy:
            raise ServiceUnavailableError(self.no_upstream_message(), code="no_healthy_upstream")
        serving = [up for up in healthy if up.serves(model)]
        if not serving:
            available = sorted({m for up in healthy for m in (up.models or ())})
            raise ModelNotFoundError(
                f"The model '{model}' does not exist on any model server; available: "
                + ", ".join(available),
                param="model",
            )
        # Least busy first; equal load rotates so idle upstreams share sequential traffic.
        now = time.monotonic()
        turn = next(self._rotation) % len(serving)
        ordered = sorted(
            serving[turn:] + serving[:turn], key=lambda up: (up.busy_until > now, up.in_flight)
        )
        if self.affinity and conversation and len(ordered) > 1:
            preferred = max(serving, key=lambda up: _rendezvous(conversation, up.url))
            if (
                preferred.busy_until <= now
                and preferred.in_flight <= ordered[0].in_flight + AFFINITY_SLACK
            ):
                ordered.remove(preferred)
                ordered.insert(0, preferred)
        return ordered

    def no_upstream_message(self) -> str:
        details = "; ".join(f"{up.url}: {up.error}" for up in self.upstreams)
        return f"No healthy model server to answer ({details})"

    def status(self) -> list[dict[str, Any]]:
        return [up.status() for up in self.upstreams]


def _rendezvous(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest())
