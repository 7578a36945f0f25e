"""Which upstream takes a request: the one routing policy, chosen by the ``routing`` setting.

``signals`` (the default) scores each upstream as the Gateway API Inference Extension's endpoint
picker does: weighted scorers, each 0..1 and higher for the better choice, over the requests the
model server says wait (``vllm:num_requests_waiting``), its KV-cache use
(``vllm:kv_cache_usage_perc``) and the requests this agent has open to it. The server's figures
are read on the health interval; between reads, the agent's own in-flight changes since the
read are added to the waiting count so that a burst does not all land on the last idle one.
``least-in-flight`` orders by the agent's open requests only; ``round-robin`` rotates.

In every policy an upstream that answered 503 goes last for ``BUSY_BACKOFF`` seconds, and with
affinity on a conversation stays on its rendezvous-hashed upstream (its prefix cache holds the
earlier turns) unless that one is clearly busier (``AFFINITY_SLACK``): the tie-breaker.

This is the whole failover policy: `Router.candidates` is the order a request tries the
upstreams in; archon.agent.failover walks it, before the first byte, on a refused connection
or a 503.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client.parser import text_string_to_metric_families

from archon.errors import ModelNotFoundError, ServiceUnavailableError

if TYPE_CHECKING:
    from archon.agent.upstreams import Upstream

Policy = Literal["signals", "least-in-flight", "round-robin"]
POLICIES: tuple[str, ...] = ("signals", "least-in-flight", "round-robin")

# After a 503 (a full queue, a model still loading) an upstream goes last for this long.
BUSY_BACKOFF = 1.0
# A conversation stays on its upstream until that one has this many more requests in flight
# than the first choice, or (signals) more requests waiting there.
AFFINITY_SLACK = 2
# The endpoint picker's scorers and their weights.
WEIGHTS = {"queue": 2.0, "kv_cache": 1.0, "in_flight": 1.0}

_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV = "vllm:kv_cache_usage_perc"


@dataclass(frozen=True)
class Signals:
    """What an upstream's /metrics said at one health check (summed over its models)."""

    waiting: float
    running: float
    kv_cache: float  # 0..1
    in_flight: int  # the agent's own open requests to it at that moment
    at: float  # time.monotonic() of the read


def parse_signals(text: str, in_flight: int, now: float) -> Signals | None:
    """The load figures of a Prometheus text page; None when it has none of them."""
    found: dict[str, float] = {}
    kv: list[float] = []
    for family in text_string_to_metric_families(text):
        if family.name in (_WAITING, _RUNNING):
            found[family.name] = sum(s.value for s in family.samples)
        elif family.name == _KV:
            kv += [s.value for s in family.samples]
    if not found and not kv:
        return None
    return Signals(
        waiting=found.get(_WAITING, 0.0),
        running=found.get(_RUNNING, 0.0),
        kv_cache=max(kv) if kv else 0.0,
        in_flight=in_flight,
        at=now,
    )


def _rendezvous(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest())


def _spread(values: list[float]) -> list[float]:
    """Min-max scores: 1 for the lowest value, 0 for the highest, 1 for all when they agree."""
    low, high = min(values), max(values)
    if math.isclose(low, high):
        return [1.0] * len(values)
    return [(high - v) / (high - low) for v in values]


class Router:
    """Orders the upstreams that may take a request (see the module docstring)."""

    def __init__(self, policy: Policy = "signals", affinity: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; one of {', '.join(POLICIES)}")
        self.policy = policy
        self.affinity = affinity
        self._rotation = itertools.count()

    @property
    def wants_signals(self) -> bool:
        return self.policy == "signals"

    def mark_busy(self, up: Upstream) -> None:
        up.busy_until = time.monotonic() + BUSY_BACKOFF

    @staticmethod
    def queue(up: Upstream) -> float:
        """Requests the upstream is thought to hold waiting now: what it said at the last read,
        plus what this agent sent it since (only while it said some wait: it was full)."""
        s = up.signals
        if s is None or not s.waiting:
            return 0.0
        return max(0.0, s.waiting + (up.in_flight - s.in_flight))

    def scores(self, serving: list[Upstream]) -> list[float]:
        """The endpoint picker's weighted score of each upstream (higher: better). An upstream
        without /metrics is judged on the agent's own in-flight count alone."""
        kv = [0.0 if up.signals is None else up.signals.kv_cache for up in serving]
        totals = [0.0] * len(serving)
        for weight, part in (
            (WEIGHTS["queue"], _spread([self.queue(up) for up in serving])),
            (WEIGHTS["kv_cache"], [1.0 - min(1.0, max(0.0, v)) for v in kv]),
            (WEIGHTS["in_flight"], _spread([float(up.in_flight) for up in serving])),
        ):
            for n, value in enumerate(part):
                totals[n] += weight * value
        return totals

    def candidates(
        self,
        upstreams: list[Upstream],
        model: str | None,
        conversation: str | None,
        limit: int,
        no_upstream: Callable[[], str],
    ) -> list[Upstream]:
        """The upstreams to try for a request, in order: healthy, serving ``model``, ordered by
        the policy; a 503 (``no_upstream()`` says why) or a 404 when there is none."""
        healthy = [up for up in upstreams if up.healthy]
        if not healthy:
            raise ServiceUnavailableError(no_upstream(), code="no_healthy_upstream")
        serving = [up for up in healthy if up.serves(model)]
        if not serving:
            available = sorted({m for up in healthy for m in (up.models or ())})
            raise ModelNotFoundError(
                f"The model '{model}' does not exist on any model server; available: "
                + ", ".join(available),
                param="model",
            )
        return self.order(serving, conversation, limit)

    def order(
        self, serving: list[Upstream], conversation: str | None, limit: int = 0
    ) -> list[Upstream]:
        """``serving`` (healthy, serving the model) in the order to try them; with a ``limit``
        (upstream_concurrency), those with that many requests open go after the others."""
        if len(serving) == 1:
            return list(serving)  # nothing to choose: the hot path of a one-server setup
        ordered = self._order(serving, conversation)
        if limit:
            ordered.sort(key=lambda up: up.in_flight >= limit)
        return ordered

    def _order(self, serving: list[Upstream], conversation: str | None) -> list[Upstream]:
        now = time.monotonic()
        turn = next(self._rotation) % len(serving)
        rotated = serving[turn:] + serving[:turn]  # equal ones take turns
        if self.policy == "round-robin":
            return sorted(rotated, key=lambda up: up.busy_until > now)
        if self.policy == "least-in-flight":
            ordered = sorted(rotated, key=lambda up: (up.busy_until > now, up.in_flight))
        else:
            score = dict(zip((id(up) for up in rotated), self.scores(rotated), strict=True))
            ordered = sorted(rotated, key=lambda up: (up.busy_until > now, -score[id(up)]))
        if self.affinity and conversation and len(ordered) > 1:
            preferred = max(serving, key=lambda up: _rendezvous(conversation, up.url))
            best = ordered[0]
            if (
                preferred.busy_until <= now
                and preferred.in_flight <= best.in_flight + AFFINITY_SLACK
                and self.queue(preferred) <= self.queue(best)
            ):
                ordered.remove(preferred)
                ordered.insert(0, preferred)
        return ordered
