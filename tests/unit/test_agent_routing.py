"""Routing decisions of the upstream pool (its state set by hand; the HTTP side is tested with
real servers in tests/integration/test_agent*.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from archon.agent.upstreams import AFFINITY_SLACK, UpstreamPool
from archon.errors import ModelNotFoundError, ServiceUnavailableError


def pool(n: int, affinity: bool = True) -> UpstreamPool:
    p = UpstreamPool(
        [f"http://u{i}:8000" for i in range(1, n + 1)],
        health_interval=5,
        check_timeout=1,
        affinity=affinity,
    )
    for up in p.upstreams:
        up.healthy, up.models, up.error = True, ("m",), None
    return p


def test_least_busy_first_and_idle_ones_share_the_load() -> None:
    p = pool(3, affinity=False)
    p.upstreams[0].in_flight = 3
    p.upstreams[1].in_flight = 1
    assert p.candidates("m", None)[0].number == 3
    p.upstreams[0].in_flight = p.upstreams[1].in_flight = 0
    firsts = Counter(p.candidates("m", None)[0].number for _ in range(30))
    assert firsts == {1: 10, 2: 10, 3: 10}


def test_unhealthy_upstreams_are_skipped_and_none_left_is_a_503() -> None:
    p = pool(2)
    p.upstreams[0].healthy = False
    assert [u.number for u in p.candidates("m", None)] == [2]
    p.upstreams[1].healthy = False
    p.upstreams[1].error = "connection refused"
    with pytest.raises(ServiceUnavailableError, match="connection refused") as err:
        p.candidates("m", None)
    assert err.value.code == "no_healthy_upstream"


def test_routes_by_model_and_names_the_available_ones() -> None:
    p = pool(2)
    p.upstreams[1].models = ("big",)
    assert [u.number for u in p.candidates("big", None)] == [2]
    with pytest.raises(ModelNotFoundError, match="available: big, m"):
        p.candidates("nope", None)
    p.upstreams[0].models = None  # unknown models: may serve anything
    assert [u.number for u in p.candidates("nope", None)] == [1]


def test_affinity_keeps_a_conversation_on_one_upstream_within_the_slack() -> None:
    p = pool(4)
    homes = {p.candidates("m", f"conversation {i}")[0].number for i in range(40)}
    assert len(homes) > 1  # conversations spread over the upstreams
    home = p.candidates("m", "conversation 7")[0]
    assert all(p.candidates("m", "conversation 7")[0] is home for _ in range(10))
    home.in_flight = AFFINITY_SLACK
    assert p.candidates("m", "conversation 7")[0] is home
    home.in_flight = AFFINITY_SLACK + 1  # clearly busier than the idle others: leave it
    assert p.candidates("m", "conversation 7")[0] is not home


def test_an_upstream_that_answered_503_goes_last_for_a_while() -> None:
    import time

    p = pool(2)
    home = p.candidates("m", "conversation 1")[0]
    home.busy_until = time.monotonic() + 60
    for _ in range(4):
        assert p.candidates("m", "conversation 1")[0] is not home
        assert p.candidates("m", None)[-1] is home
    home.busy_until = 0.0
    assert p.candidates("m", "conversation 1")[0] is home


def test_a_lease_counts_one_request_until_released_exactly_once() -> None:
    p = pool(1)
    up = p.upstreams[0]
    with p.lease(up) as lease:
        assert up.in_flight == 1
    assert up.in_flight == 0
    lease.release()  # a second release changes nothing
    assert up.in_flight == 0

    with pytest.raises(RuntimeError), p.lease(up):
        assert up.in_flight == 1
        raise RuntimeError("the read failed")
    assert up.in_flight == 0

    with p.lease(up) as lease:
        kept = lease.detach()  # handed on: the block's end leaves it counted
    assert up.in_flight == 1
    with kept:  # the new owner's block releases it
        pass
    assert up.in_flight == 0
    with p.lease(up) as lease:
        stream = lease.detach()
    stream.release()
    stream.release()
    assert up.in_flight == 0


def test_a_503_moves_an_upstream_back_for_a_while() -> None:
    p = pool(2, affinity=False)
    p.mark_busy(p.upstreams[0])
    assert all(p.candidates("m", None)[0].number == 2 for _ in range(4))
