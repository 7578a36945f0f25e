"""The admission queue: priority order, the bound, shedding the lower class, deadlines, clients
that leave, and which class a request gets. The pool's state is set by hand and requests take
real leases; the same queue is tested through real agents in test_agent_overload.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from archon.agent.admission import Admission, QueuePolicy, priority_of
from archon.agent.auth import ApiKey
from archon.agent.metrics import AgentMetrics
from archon.agent.upstreams import Lease, UpstreamPool
from archon.errors import InvalidRequestError, ModelNotAllowedError, ServiceUnavailableError
from archon.service import new_registry
from tests.support.pools import healthy_pool


def setup(
    upstreams: int = 2, concurrency: int = 1, size: int = 4, timeout: float = 5.0
) -> tuple[UpstreamPool, Admission, AgentMetrics]:
    pool = healthy_pool(upstreams, affinity=False)
    metrics = AgentMetrics(new_registry(), pool, None)
    admission = Admission(
        pool,
        QueuePolicy(concurrency, size, {"interactive": timeout, "batch": timeout}),
        metrics,
    )
    metrics.pool_gauges.queue_depth = admission.depth
    return pool, admission, metrics


async def go(pool: UpstreamPool, admission: Admission, priority: Any, log: list[str]) -> Lease:
    """What the gateway does: wait for admission, then lease the first candidate at once."""
    await admission.enter(priority, "m")
    lease = pool.lease(pool.candidates("m", None, admission.policy.concurrency)[0])
    log.append(priority)
    return lease


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_free_slots_go_at_once_and_interactive_goes_before_batch() -> None:
    async def scenario() -> None:
        pool, admission, metrics = setup(upstreams=2, concurrency=1)
        log: list[str] = []
        first = [await go(pool, admission, "batch", log) for _ in range(2)]  # both slots
        assert [up.in_flight for up in pool.upstreams] == [1, 1]
        waiting = [
            asyncio.create_task(go(pool, admission, p, log))
            for p in ("batch", "batch", "interactive", "interactive")
        ]
        await settle()
        assert admission.depth() == {"interactive": 2, "batch": 2}
        assert (
            'archon_agent_queue_depth{priority="batch"} 2.0'
            in generate_latest(metrics.registry).decode()
        )
        first[0].release()
        await settle()
        assert log[2:] == ["interactive"]  # the freed slot went to the later interactive one
        first[1].release()
        await settle()
        assert log[2:] == ["interactive", "interactive"]
        leases = [t.result() for t in waiting if t.done()]
        for lease in leases:
            lease.release()
            await settle()
        for task in waiting:
            (await task).release()
        assert log[2:] == ["interactive", "interactive", "batch", "batch"]
        assert [up.in_flight for up in pool.upstreams] == [0, 0]
        assert admission.depth() == {"interactive": 0, "batch": 0}
        text = generate_latest(metrics.registry).decode()
        assert 'archon_agent_queue_wait_seconds_count{priority="interactive"} 2.0' in text

    run(scenario)


def test_the_bound_sheds_the_newest_batch_request_for_an_interactive_one() -> None:
    async def scenario() -> None:
        pool, admission, metrics = setup(upstreams=1, concurrency=1, size=2)
        log: list[str] = []
        held = await go(pool, admission, "batch", log)
        b1 = asyncio.create_task(go(pool, admission, "batch", log))
        b2 = asyncio.create_task(go(pool, admission, "batch", log))
        await settle()
        i1 = asyncio.create_task(go(pool, admission, "interactive", log))  # full: sheds b2
        await settle()
        with pytest.raises(ServiceUnavailableError) as shed:
            await b2
        assert shed.value.code == "queue_shed" and shed.value.status_code == 503
        assert int(shed.value.headers["retry-after"]) >= 1
        i2 = asyncio.create_task(go(pool, admission, "interactive", log))  # sheds b1
        await settle()
        with pytest.raises(ServiceUnavailableError):
            await b1
        # Full of interactive requests: another one has nobody lower to shed and is refused.
        with pytest.raises(ServiceUnavailableError) as full:
            await go(pool, admission, "interactive", log)
        assert full.value.code == "queue_full"
        with pytest.raises(ServiceUnavailableError):
            await go(pool, admission, "batch", log)
        held.release()
        (await i1).release()
        (await i2).release()
        assert log == ["batch", "interactive", "interactive"]
        text = generate_latest(metrics.registry).decode()
        assert 'archon_agent_shed_total{priority="batch",reason="shed"} 2.0' in text
        assert 'archon_agent_shed_total{priority="batch",reason="queue_full"} 1.0' in text
        assert 'archon_agent_shed_total{priority="interactive",reason="queue_full"} 1.0' in text

    run(scenario)


def test_a_request_waits_no_longer_than_its_deadline() -> None:
    async def scenario() -> None:
        pool, admission, metrics = setup(upstreams=1, concurrency=1, timeout=0.2)
        log: list[str] = []
        held = await go(pool, admission, "interactive", log)
        with pytest.raises(ServiceUnavailableError) as late:
            await go(pool, admission, "interactive", log)
        assert late.value.code == "queue_timeout"
        assert "retry-after" in late.value.headers
        assert admission.depth()["interactive"] == 0
        held.release()
        (await go(pool, admission, "interactive", log)).release()  # the slot is free again
        assert pool.upstreams[0].in_flight == 0
        assert 'reason="timeout"} 1.0' in generate_latest(metrics.registry).decode()

    run(scenario)


def test_a_client_that_leaves_gives_up_its_place_and_its_slot() -> None:
    async def scenario() -> None:
        pool, admission, _ = setup(upstreams=1, concurrency=1)
        log: list[str] = []
        held = await go(pool, admission, "interactive", log)
        gone = asyncio.create_task(go(pool, admission, "interactive", log))
        await settle()
        gone.cancel()
        await settle()
        assert admission.depth()["interactive"] == 0
        # Granted, then cancelled before it ran: the slot passes on to the next one.
        after = asyncio.create_task(go(pool, admission, "batch", log))
        late = asyncio.create_task(go(pool, admission, "interactive", log))
        await settle()
        held.release()  # grants `late` (interactive first)...
        late.cancel()  # ...which leaves before it runs
        await settle()
        assert after.done()
        (await after).release()
        assert pool.upstreams[0].in_flight == 0
        assert admission._granted == 0
        # Cancelled, and a slot frees before its task ran: the release must not trip over it.
        held = await go(pool, admission, "interactive", log)
        leaving = asyncio.create_task(go(pool, admission, "interactive", log))
        shed = asyncio.create_task(go(pool, admission, "batch", log))
        await settle()
        leaving.cancel()
        shed.cancel()
        held.release()  # dispatch meets the cancelled waiters (InvalidStateError before)
        await settle()
        assert leaving.cancelled() and shed.cancelled()
        assert admission.depth() == {"interactive": 0, "batch": 0}
        assert admission._granted == 0
        (await go(pool, admission, "batch", log)).release()

    run(scenario)


def test_nothing_healthy_means_no_waiting_and_health_wakes_the_queue() -> None:
    async def scenario() -> None:
        pool, admission, _ = setup(upstreams=1, concurrency=1)
        log: list[str] = []
        held = await go(pool, admission, "interactive", log)
        waiting = asyncio.create_task(admission.enter("interactive", "m"))
        await settle()
        assert not waiting.done()
        pool.upstreams[0].healthy = False  # e.g. marked failed; the next round tells
        admission.dispatch()
        await settle()
        assert waiting.done()  # let through to routing, which answers the 503 at once
        admission._granted = 0
        await admission.enter("interactive", "m")  # nothing healthy: no wait at all
        held.release()

    run(scenario)


def test_another_model_is_not_held_up_by_a_full_one() -> None:
    async def scenario() -> None:
        pool, admission, _ = setup(upstreams=2, concurrency=1)
        pool.upstreams[1].models = ("other",)
        log: list[str] = []
        held = await go(pool, admission, "interactive", log)
        blocked = asyncio.create_task(admission.enter("interactive", "m"))
        await settle()
        await asyncio.wait_for(admission.enter("batch", "other"), 1)
        assert not blocked.done()
        held.release()
        await asyncio.wait_for(blocked, 1)

    run(scenario)


def named(priority: str = "interactive", set_priority: bool = False) -> ApiKey:
    return ApiKey(
        "k",
        b"x",
        metered=True,
        priority=priority,
        set_priority=set_priority,  # type: ignore[arg-type]
    )


def test_the_class_of_a_request() -> None:
    assert priority_of(None, None, "interactive") == "interactive"
    assert priority_of(None, None, "batch") == "batch"
    assert priority_of(None, "interactive", "batch") == "interactive"  # auth off: anyone
    assert priority_of(named("batch"), None, "interactive") == "batch"
    assert priority_of(named(), "batch", "interactive") == "batch"  # stepping down: allowed
    assert priority_of(named("batch", True), "Interactive", "batch") == "interactive"
    with pytest.raises(ModelNotAllowedError) as refused:
        priority_of(named("batch"), "interactive", "interactive")
    assert refused.value.status_code == 403 and refused.value.code == "priority_not_allowed"
    plain = ApiKey("plain", b"y")  # a plain-format key: the default class, may step down only
    assert priority_of(plain, None, "batch") == "batch"
    with pytest.raises(ModelNotAllowedError):
        priority_of(plain, "interactive", "batch")
    with pytest.raises(InvalidRequestError) as bad:
        priority_of(None, "urgent", "interactive")
    assert bad.value.param == "x-archon-priority"
