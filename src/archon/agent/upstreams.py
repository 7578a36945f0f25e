"""The model servers behind the agent: who they are (listed, or found in DNS), health checks,
their load figures, and the leases that count each request on one.

Which upstream takes a request is decided in one place, archon.agent.routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from archon.agent.discovery import DnsTarget, Resolver, is_dns, system_resolver
from archon.agent.routing import Router, Signals, parse_signals
from archon.service import Lifecycle

log = logging.getLogger("archon.agent")


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
    signals: Signals | None = None  # its /metrics at the last health check (routing="signals")
    found_by: str | None = None  # the dns+ entry it was resolved from; None: listed
    on_release: Callable[[], None] | None = field(default=None, repr=False)

    def embedding_models(self) -> set[str]:
        return {str(c.get("id")) for c in self.model_cards if c.get("type") == "embeddings"}

    def serves(self, model: str | None) -> bool:
        return model is None or self.models is None or model in self.models

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "models": list(self.models) if self.models is not None else None,
            "error": self.error,
            **({"found_by": self.found_by} if self.found_by else {}),
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
            if self.upstream.on_release is not None:
                self.upstream.on_release()  # a queued request may go now (admission)

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
        entries: list[str],
        *,
        health_interval: float,
        check_timeout: float,
        affinity: bool,
        headers: dict[str, str] | None = None,
        router: Router | None = None,
        resolver: Resolver = system_resolver,
    ):
        """``entries``: base URLs, and ``dns+http(s)://name:port`` names (archon.agent.discovery)
        whose addresses become upstreams on each health round."""
        self.targets = [DnsTarget.parse(e) for e in entries if is_dns(e)]
        self.upstreams = [Upstream(url, n) for n, url in enumerate(entries, start=1)]
        self.upstreams = [up for up in self.upstreams if not is_dns(up.url)]
        self._numbers = itertools.count(len(entries) + 1)
        self.health_interval = health_interval
        self.check_timeout = check_timeout
        self.affinity = affinity
        self.router = router or Router("signals", affinity)
        self.resolver = resolver
        self.headers = headers or {}
        self.on_change: Callable[[], None] | None = None  # after each round (admission)
        self.on_release: Callable[[], None] | None = None  # given to every upstream's leases
        self._http: Lifecycle[aiohttp.ClientSession] = Lifecycle()  # ready once started
        self._loop_task: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._last_recheck = 0.0

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._http.ready(session)
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
        if self.targets:
            await self.discover()
        await asyncio.gather(*(self.check(up) for up in self.upstreams))
        if self.on_change is not None:
            self.on_change()

    async def discover(self) -> None:
        """Resolve each dns+ entry again: new addresses join, vanished ones leave the pool."""
        for target in self.targets:
            try:
                addresses = await asyncio.wait_for(
                    self.resolver(target.host, target.port), self.check_timeout
                )
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "could not resolve %s (%s); keeping its %d upstream(s)",
                    target.entry,
                    _describe(exc),
                    sum(up.found_by == target.entry for up in self.upstreams),
                )
                continue
            wanted = {target.url(a) for a in addresses}
            mine = {up.url for up in self.upstreams if up.found_by == target.entry}
            for up in [u for u in self.upstreams if u.found_by == target.entry]:
                if up.url not in wanted:
                    # Its open requests keep their lease on the object and end normally.
                    log.info("upstream %s left %s", up.url, target.entry)
                    self.upstreams.remove(up)
            for url in sorted(wanted - mine):
                if any(up.url == url for up in self.upstreams):
                    continue  # also listed, or found by another entry
                log.info("upstream %s found by %s", url, target.entry)
                up = Upstream(url, next(self._numbers), found_by=target.entry)
                up.error = "found, not checked yet"
                self.upstreams.append(up)

    async def check(self, up: Upstream) -> None:
        session = self._session()
        timeout = aiohttp.ClientTimeout(total=self.check_timeout)
        was = up.healthy
        try:
            async with session.get(
                up.url + "/health", timeout=timeout, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200].strip()
                    raise RuntimeError(f"/health answered {resp.status} {detail}")
            up.models, up.model_cards = await self._models(up, timeout)
            if self.router.wants_signals:
                up.signals = await self._signals(up, timeout)
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
        try:
            async with self._session().get(
                up.url + "/v1/models", timeout=timeout, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    return None, []
                cards = (await resp.json(content_type=None)).get("data") or []
                return tuple(str(c.get("id")) for c in cards), cards
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return None, []

    async def _signals(self, up: Upstream, timeout: aiohttp.ClientTimeout) -> Signals | None:
        """The load figures of ``up``'s /metrics; None when it has none (or no /metrics)."""
        try:
            async with self._session().get(
                up.url + "/metrics", timeout=timeout, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
            return parse_signals(text, up.in_flight, time.monotonic())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None

    def _session(self) -> aiohttp.ClientSession:
        return self._http.require("the agent is starting", "agent_starting")

    def lease(self, up: Upstream) -> Lease:
        """Count a request on ``up`` until the lease is released (see Lease)."""
        up.on_release = self.on_release
        return Lease(up)

    def mark_busy(self, up: Upstream) -> None:
        """``up`` answered 503 (a full queue, a model still loading): others go first a while."""
        self.router.mark_busy(up)

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
        """The one chat model the healthy upstreams serve, if there is one: embedding models
        (a card with ``"type": "embeddings"``, as archon serve marks them) cannot chat."""
        names = {
            m
            for up in self.upstreams
            if up.healthy
            for m in (up.models or ())
            if m not in up.embedding_models()
        }
        return next(iter(names)) if len(names) == 1 else None

    def candidates(
        self, model: str | None, conversation: str | None, limit: int = 0
    ) -> list[Upstream]:
        """Healthy upstreams serving ``model``, in the order to try them (the router decides)."""
        return self.router.candidates(
            self.upstreams, model, conversation, limit, self.no_upstream_message
        )

    def no_upstream_message(self) -> str:
        details = "; ".join(
            [f"{up.url}: {up.error}" for up in self.upstreams]
            + [
                f"{t.entry}: no address found"
                for t in self.targets
                if not any(up.found_by == t.entry for up in self.upstreams)
            ]
        )
        return f"No healthy model server to answer ({details})"

    def status(self) -> list[dict[str, Any]]:
        return [up.status() for up in self.upstreams]
