"""One request's bookkeeping from its first byte to its end: its route's metrics and a metered
key's grant, ended exactly once, here, whichever way the request ends (answered, refused,
failed, cancelled, or a stream that finished or broke later)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from archon.agent.limits import Grant
from archon.agent.metrics import AgentMetrics

Route = Literal["chat", "completions", "embeddings"]


@dataclass
class Exchange:
    metrics: AgentMetrics
    route: Route
    began: float = field(default_factory=time.perf_counter)
    grant: Grant | None = None  # set by preparation when a metered key is admitted
    ended: bool = False

    def end(self, status: int, usage: dict[str, Any] | None = None, estimate: bool = False) -> None:
        """An answer (or a stream) that reached the client: its duration and status counted,
        the grant's tokens from ``usage`` (or estimated)."""
        self._finish(status, usage, estimate, observe=True)

    def fail(self, status: int) -> None:
        """A request that ended with an error response (counted by the API wrapper) or was
        cancelled on the way (499)."""
        self._finish(status, None, False, observe=False)

    def _finish(
        self, status: int, usage: dict[str, Any] | None, estimate: bool, observe: bool
    ) -> None:
        if self.ended:
            return
        self.ended = True
        if observe:
            self.metrics.observe(self.route, status, self.began)
        if self.grant is not None:
            self.grant.finish(status, usage, estimate)  # the one place a grant ends
