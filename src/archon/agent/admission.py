"""Admission under overload: priority classes, a bounded queue, shedding the lower class first.

An upstream is *full* when the agent has ``upstream_concurrency`` requests open to it. While
every healthy upstream serving a request's model is full, the request waits in its class's
FIFO; a freed slot goes to the oldest ``interactive`` request, and to ``batch`` only when no
interactive one waits. The queue holds at most ``queue_size`` requests (all classes): at the
bound a newcomer takes the place of the newest waiting request of a lower class, which is shed,
and is itself refused when none is lower. A request that waited past its class's deadline is
shed too. Every refusal is a 503 in the OpenAI error shape with ``Retry-After``, the time the
queue ahead is expected to take at the rate slots were freed lately.

The queue is per agent process; each replica keeps its own (the model servers' own queues
and the routing signals even out the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from archon.errors import InvalidRequestError, ModelNotAllowedError, ServiceUnavailableError

if TYPE_CHECKING:
    from archon.agent.auth import ApiKey
    from archon.agent.metrics import AgentMetrics
    from archon.agent.upstreams import UpstreamPool

Priority = Literal["interactive", "batch"]
CLASSES: tuple[Priority, ...] = ("interactive", "batch")  # highest first
HEADER = "x-archon-priority"


def priority_of(key: ApiKey | None, header: str | None, default: Priority) -> Priority:
    """The class of a request: its key's (a named key's ``priority``; otherwise ``default``),
    lowered by the header by anyone, raised only by a key with ``set_priority`` or with auth off.
    """
    base: Priority = key.priority if key is not None and key.metered else default
    if header is None:
        return base
    wanted = header.strip().lower()
    if wanted not in CLASSES:
        raise InvalidRequestError(
            f"{HEADER} must be one of {', '.join(CLASSES)}, not {header!r}", param=HEADER
        )
    if CLASSES.index(wanted) > CLASSES.index(base):
        return wanted  # a lower class: anyone may step down
    if key is None or key.set_priority or wanted == base:
        return wanted
    raise ModelNotAllowedError(
        f"This key may not raise its priority to {wanted} (set_priority in the keys file)",
        param=HEADER,
        code="priority_not_allowed",
    )


@dataclass(frozen=True)
class QueuePolicy:
    concurrency: int  # requests open to one upstream before the next ones wait
    size: int  # waiting requests, all classes together
    timeouts: dict[str, float]  # seconds a request of each class may wait


class _Waiter:
    __slots__ = ("future", "model", "priority", "since")

    def __init__(self, priority: Priority, model: str | None, future: asyncio.Future[bool]):
        self.priority, self.model, self.future = priority, model, future
        self.since = time.monotonic()


class Admission:
    """Gatekeeper before routing (see the module docstring). ``enter`` returns when the request
    may go; the caller then takes its upstream lease at once, without awaiting in between."""

    def __init__(self, pool: UpstreamPool, policy: QueuePolicy, metrics: AgentMetrics | None):
        self.pool = pool
        self.policy = policy
        self.metrics = metrics
        self.queues: dict[str, deque[_Waiter]] = {c: deque() for c in CLASSES}
        self._granted = 0  # let through, lease not taken yet: counted as a used slot
        self._gap = 1.0  # seconds between freed slots lately (an average), for Retry-After
        self._last_free = time.monotonic()
        pool.on_release = self._released
        pool.on_change = self.dispatch

    # -- state ------------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        return {c: len(q) for c, q in self.queues.items()}

    def _serving(self, model: str | None) -> list:
        return [up for up in self.pool.upstreams if up.healthy and up.serves(model)]

    def free(self, model: str | None) -> int | None:
        """Open slots for ``model``; None when no healthy upstream serves it (nothing to wait
        for: routing answers the 503 or 404 at once)."""
        serving = self._serving(model)
        if not serving:
            return None
        limit = self.policy.concurrency
        return sum(max(0, limit - up.in_flight) for up in serving) - self._granted

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def retry_after(self, ahead: int) -> int:
        """Seconds until ``ahead`` + 1 slots free up at the recent rate (1 to 60)."""
        return max(1, min(60, math.ceil(self._gap * (ahead + 1))))

    # -- the gate ---------------------------------------------------------------------

    async def enter(self, priority: Priority, model: str | None) -> None:
        rank = CLASSES.index(priority)
        if not any(self.queues[c] for c in CLASSES[: rank + 1]):
            free = self.free(model)
            if free is None or free > 0:
                return  # the fast path: nobody of this class or above waits, a slot is open
        if self.waiting() >= self.policy.size and not self._shed_below(rank):
            self._count_shed(priority, "queue_full")
            raise self._refusal(
                f"The model servers are busy and {self.waiting()} requests already wait "
                f"(queue_size {self.policy.size}); retry later",
                "queue_full",
            )
        waiter = _Waiter(priority, model, asyncio.get_running_loop().create_future())
        self.queues[priority].append(waiter)
        self.dispatch()
        try:
            async with asyncio.timeout(self.policy.timeouts[priority]):
                await waiter.future
        except TimeoutError:
            if self._resolve_late(waiter):
                return
            self._count_shed(priority, "timeout")
            raise self._refusal(
                f"Waited {self.policy.timeouts[priority]:g}s for a free model server "
                f"(queue_timeout of {priority} requests); retry later",
                "queue_timeout",
            ) from None
        except asyncio.CancelledError:  # the client left while waiting
            if self._resolve_late(waiter):
                self.dispatch()  # pass the slot on
            raise
        if not waiter.future.result():
            self._count_shed(priority, "shed")
            raise self._refusal(
                "Shed for a request of a higher priority: the queue is full; retry later",
                "queue_shed",
            )
        self._granted -= 1
        if self.metrics is not None:
            self.metrics.queue_wait.labels(priority).observe(time.monotonic() - waiter.since)

    def _resolve_late(self, waiter: _Waiter) -> bool:
        """After a timeout or a cancel: True when a slot had been granted just before (it is
        then the caller's); otherwise the waiter leaves its queue."""
        if waiter.future.done() and not waiter.future.cancelled():
            if waiter.future.result():
                self._granted -= 1
                return True
            return False
        waiter.future.cancel()
        with contextlib.suppress(ValueError):  # already taken out (shed)
            self.queues[waiter.priority].remove(waiter)
        return False

    def _shed_below(self, rank: int) -> bool:
        """Refuse the newest waiting request of the lowest class below ``rank``, if any."""
        for cls in reversed(CLASSES[rank + 1 :]):
            queue = self.queues[cls]
            while queue:
                victim = queue.pop()
                if not victim.future.done():  # not one cancelled a moment ago
                    victim.future.set_result(False)
                    return True
        return False

    def dispatch(self) -> None:
        """Let waiting requests go while their model has free slots: oldest first, a class only
        after every higher one (per model: a full model does not hold up another's requests)."""
        full: set[str | None] = set()
        for cls in CLASSES:
            queue = self.queues[cls]
            if not queue:
                continue
            kept: deque[_Waiter] = deque()
            while queue:
                waiter = queue.popleft()
                if waiter.future.done():
                    continue  # cancelled (a client left, a deadline): its task removes nothing
                if waiter.model not in full:
                    free = self.free(waiter.model)
                    if free is None or free > 0:
                        self._granted += 1
                        waiter.future.set_result(True)
                        continue
                    full.add(waiter.model)
                kept.append(waiter)
            self.queues[cls] = kept

    def _released(self) -> None:
        now = time.monotonic()
        self._gap = 0.8 * self._gap + 0.2 * min(10.0, now - self._last_free)
        self._last_free = now
        if self._granted or self.waiting():
            self.dispatch()

    def _count_shed(self, priority: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.shed.labels(priority, reason).inc()

    def _refusal(self, message: str, code: str) -> ServiceUnavailableError:
        seconds = self.retry_after(self.waiting())
        return ServiceUnavailableError(message, code=code, headers={"retry-after": str(seconds)})


def make_admission(
    pool: UpstreamPool,
    concurrency: int,
    size: int,
    timeouts: dict[str, float],
    metrics: AgentMetrics | None,
) -> Admission | None:
    """None when upstream_concurrency is 0: no agent queue (the model servers queue)."""
    if concurrency <= 0:
        return None
    return Admission(pool, QueuePolicy(concurrency, size, timeouts), metrics)
