"""Routing decisions of the upstream pool (its state set by hand; the HTTP side is tested with
real servers in tests/integration/test_agent*.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from archon.agent.discovery import DnsTarget, system_resolver
from archon.agent.routing import AFFINITY_SLACK, Router, Signals, parse_signals
from archon.agent.settings import load_agent_settings
from archon.agent.upstreams import UpstreamPool
from archon.errors import ConfigError, ModelNotFoundError, ServiceUnavailableError
from tests.support.pools import healthy_pool


def pool(n: int, affinity: bool = True) -> UpstreamPool:
    return healthy_pool(n, affinity=affinity)


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


# -- the routing policies (archon.agent.routing) ---------------------------------------------

MODEL_SERVER_METRICS = """\
# HELP vllm:num_requests_running Requests being decoded.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 4.0
# HELP vllm:num_requests_waiting Requests waiting for a slot.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage, 0 to 1.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.75
# HELP vllm:prompt_tokens_total Prompt tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m"} 120.0
"""


def signals(waiting: float, kv: float, in_flight: int = 0, running: float = 1) -> Signals:
    return Signals(waiting=waiting, running=running, kv_cache=kv, in_flight=in_flight, at=0.0)


def test_the_load_figures_are_read_from_a_metrics_page() -> None:
    s = parse_signals(MODEL_SERVER_METRICS, in_flight=2, now=7.0)
    assert s == Signals(waiting=3.0, running=4.0, kv_cache=0.75, in_flight=2, at=7.0)
    assert parse_signals("# nothing here\nother_metric 1\n", 0, 0.0) is None


def test_signals_prefer_the_upstream_that_queues_less_and_has_kv_to_spare() -> None:
    p = pool(2, affinity=False)
    a, b = p.upstreams
    a.signals, b.signals = signals(waiting=4, kv=1.0), signals(waiting=0, kv=0.5)
    a.in_flight, b.in_flight = 1, 3  # least-in-flight would pick a
    assert all(p.candidates("m", None)[0] is b for _ in range(4))
    p.router = Router("least-in-flight", affinity=False)
    assert all(p.candidates("m", None)[0] is a for _ in range(4))


def test_signals_count_what_the_agent_sent_since_the_last_read() -> None:
    p = pool(2, affinity=False)
    a, b = p.upstreams
    a.signals = signals(waiting=1, kv=0.9, in_flight=0)
    b.signals = signals(waiting=3, kv=0.9, in_flight=0)
    assert p.router.queue(a) == 1 and p.candidates("m", None)[0] is a
    a.in_flight = 4  # four more sent to a since it said one waits: a now queues five
    assert p.router.queue(a) == 5
    assert p.candidates("m", None)[0] is b
    b.signals = signals(waiting=0, kv=0.9)
    b.in_flight = 9  # b said nobody waits: only the in-flight scorer counts it
    assert p.router.queue(b) == 0


def test_round_robin_takes_turns_whatever_the_load() -> None:
    p = pool(3, affinity=False)
    p.router = Router("round-robin", affinity=False)
    p.upstreams[0].in_flight = 50
    firsts = Counter(p.candidates("m", None)[0].number for _ in range(30))
    assert firsts == {1: 10, 2: 10, 3: 10}
    with pytest.raises(ValueError, match="unknown routing policy"):
        Router("random")  # type: ignore[arg-type]


def test_with_a_concurrency_limit_full_upstreams_go_last() -> None:
    p = pool(2, affinity=False)
    p.upstreams[0].in_flight = 2
    p.upstreams[0].signals = signals(waiting=0, kv=0.0)
    p.upstreams[1].signals = signals(waiting=5, kv=1.0)  # worse by its signals, but not full
    assert p.candidates("m", None)[0].number == 1
    assert p.candidates("m", None, limit=2)[0].number == 2


def test_affinity_leaves_an_upstream_that_says_more_wait_there() -> None:
    p = pool(2)
    home = p.candidates("m", "conversation 3")[0]
    other = next(up for up in p.upstreams if up is not home)
    home.signals, other.signals = signals(0, 0.2), signals(0, 0.2)
    assert p.candidates("m", "conversation 3")[0] is home
    home.signals = signals(2, 0.2)
    assert p.candidates("m", "conversation 3")[0] is other


# -- upstreams found in DNS (archon.agent.discovery) -----------------------------------------


def test_a_dns_entry_becomes_one_upstream_per_address_and_follows_the_answers() -> None:
    answers: dict[str, Any] = {"model.ns.svc": ["10.0.0.1", "10.0.0.2"]}

    async def resolver(host: str, port: int) -> list[str]:
        answer = answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> None:
        p = UpstreamPool(
            ["http://static:8000", "dns+http://model.ns.svc:8000"],
            health_interval=5,
            check_timeout=1,
            affinity=False,
            resolver=resolver,
        )
        assert [up.url for up in p.upstreams] == ["http://static:8000"]
        await p.discover()
        assert [up.url for up in p.upstreams] == [
            "http://static:8000",
            "http://10.0.0.1:8000",
            "http://10.0.0.2:8000",
        ]
        numbers = {up.url: up.number for up in p.upstreams}
        answers["model.ns.svc"] = ["10.0.0.2", "fd00::3"]  # scaled: one pod gone, one new
        await p.discover()
        assert [up.url for up in p.upstreams] == [
            "http://static:8000",
            "http://10.0.0.2:8000",
            "http://[fd00::3]:8000",
        ]
        assert p.upstreams[1].number == numbers["http://10.0.0.2:8000"]  # kept, not renewed
        assert p.upstreams[2].found_by == "dns+http://model.ns.svc:8000"
        answers["model.ns.svc"] = OSError("Name or service not known")
        await p.discover()  # a failed lookup keeps the last answer
        assert len(p.upstreams) == 3
        answers["model.ns.svc"] = []
        await p.discover()
        assert [up.url for up in p.upstreams] == ["http://static:8000"]
        assert "dns+http://model.ns.svc:8000: no address found" in p.no_upstream_message()

    asyncio.run(scenario())


def test_localhost_resolves_through_the_system_resolver() -> None:
    addresses = asyncio.run(system_resolver("localhost", 8000))
    assert "127.0.0.1" in addresses or "::1" in addresses


def test_dns_entries_are_checked_when_the_settings_load() -> None:
    assert DnsTarget.parse("dns+https://m.ns.svc:8443/base").url("10.1.2.3") == (
        "https://10.1.2.3:8443/base"
    )
    with pytest.raises(ValueError, match="name the port"):
        DnsTarget.parse("dns+http://m.ns.svc")
    with pytest.raises(ConfigError, match="upstreams"):
        load_agent_settings({"upstreams": ["dns+ftp://m:1"]})
    ok = load_agent_settings({"upstreams": ["dns+http://m.ns.svc:8000", "http://a:1"]})
    assert ok.upstreams == ["dns+http://m.ns.svc:8000", "http://a:1"]
