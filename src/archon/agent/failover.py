"""Opening a request on a model server, with failover before the first byte.

The order to try them is archon.agent.routing's (`Router.candidates`: healthy, serving the
model, ordered by the policy: scoring, affinity's `AFFINITY_SLACK`, `BUSY_BACKOFF` after a
503). Here: a refused or dropped connection marks the upstream failed and a 503 marks it busy,
and either way the next one is tried; a timeout is the client's 504.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from archon.agent.admission import Admission
from archon.agent.metrics import AgentMetrics
from archon.agent.preparation import Prepared
from archon.agent.settings import AgentSettings
from archon.agent.upstreams import Lease, Upstream, UpstreamPool
from archon.errors import GatewayTimeoutError, ServiceUnavailableError
from archon.service import Lifecycle


@dataclass
class Failover:
    settings: AgentSettings
    pool: UpstreamPool
    http: Lifecycle[aiohttp.ClientSession]
    metrics: AgentMetrics
    admission: Admission | None  # None: no agent queue (upstream_concurrency 0)

    def __post_init__(self) -> None:
        self.headers = {"content-type": "application/json", **self.pool.headers}
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.request_timeout,
        )

    def timed_out(self, up: Upstream, what: str) -> GatewayTimeoutError:
        """The 504 for an upstream that ``what`` (sent nothing, did not finish) in time."""
        self.metrics.upstream_errors.labels(up.url, "timeout").inc()
        return GatewayTimeoutError(
            f"The model server {up.url} {what} within request_timeout "
            f"({self.settings.request_timeout:g}s)"
        )

    async def open(self, path: str, prepared: Prepared) -> tuple[aiohttp.ClientResponse, Lease]:
        """Send to the best upstream; on a connection error or a 503, try the next one.

        The returned lease holds the upstream's in-flight count until its owner releases it;
        every other way out of here releases it on the spot.
        """
        session = self.http.require("the agent is starting", "agent_starting")
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
                    resp = await session.post(
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
                    raise self.timed_out(up, "sent nothing") from None
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
