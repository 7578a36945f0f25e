"""Per-key limits with the in-process backend and a clock set by hand (the HTTP side, the SDK
and Redis are tested with real processes in tests/integration/test_agent_limits.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archon.agent.auth import KeyRing, hash_key
from archon.agent.limits import Limiter, MemoryBackend, StreamMeter, Windows, duration, redact
from archon.agent.metrics import AgentMetrics
from archon.agent.upstreams import UpstreamPool
from archon.errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotAllowedError,
    QuotaExceededError,
    RateLimitError,
)
from archon.service import new_registry

# 2025-03-31 23:59:00 UTC: a minute, a day and a month end 60 s later.
T0 = datetime(2025, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()


def ring(tmp_path: Path, text: str) -> KeyRing:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    return KeyRing.load([], path)


KEYS = f"""\
# named keys, with limits
keys:
  - name: alice
    key: {hash_key("alice-key")}
    requests_per_minute: 2
    priority: batch
  - name: bob
    key: {hash_key("bob-key")}
    tokens_per_minute: 30
    daily_token_budget: 100
    max_concurrent: 1
  - name: carol
    key: {hash_key("carol-key")}
    models: ["small-*"]
    max_tokens: 64
    default_max_tokens: 16
  - name: ops
    key: {hash_key("ops-key")}
    admin: true
"""


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock) -> Limiter:
    pool = UpstreamPool(["http://u1:8000"], health_interval=5, check_timeout=1, affinity=False)
    pool.upstreams[0].healthy, pool.upstreams[0].models = True, ("small-1", "big")
    metrics = AgentMetrics(new_registry(), pool, None)
    return Limiter(MemoryBackend(), metrics, pool, fail_closed=False, clock=clock)


def run(coro):
    return asyncio.run(coro)


def test_durations_read_as_openai_writes_them() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1) == "1s"
    assert duration(8.64) == "8.64s"
    assert duration(360) == "6m0s"
    assert duration(3723) == "1h2m3s"
    assert duration(59.99996) == "1m0s"


def test_windows_end_with_the_utc_minute_day_and_month() -> None:
    w = Windows.at(T0 + 30)
    assert (w.day, w.month) == ("2025-03-31", "2025-03")
    assert w.minute_reset == pytest.approx(30)
    assert w.day_reset == pytest.approx(30)
    assert w.month_reset == pytest.approx(30)
    assert Windows.at(T0 + 60).month == "2025-04"


def test_redis_urls_lose_their_password_in_logs() -> None:
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("redis://redis:6379/0") == "redis://redis:6379/0"


def test_yaml_keys_have_names_and_limits_and_plain_files_still_load(tmp_path: Path) -> None:
    keys = ring(tmp_path, KEYS)
    assert [k.name for k in keys.metered] == ["alice", "bob", "carol", "ops"]
    alice = keys.check("Bearer alice-key")
    assert alice is not None and alice.metered and alice.priority == "batch"
    assert alice.limits.requests_per_minute == 2 and alice.limits.tokens_per_minute is None
    carol = keys.check("Bearer carol-key")
    assert carol is not None
    assert carol.may_use("small-1") and not carol.may_use("big") and not carol.may_use(None)
    assert keys.check("Bearer ops-key").admin  # type: ignore[union-attr]
    assert hash_key("alice-key").encode() not in b"".join(keys.digests)

    plain = tmp_path / "plain"
    plain.write_text(f"{hash_key('x')}  team-x\nraw-key\n{hash_key('x')}\n")
    legacy = KeyRing.load(["env-key"], plain)
    named = {k.name: k for k in legacy.keys}
    assert set(named) == {"key-1", "team-x", "key-3"} and not legacy.metered
    assert legacy.check("Bearer x").name == "team-x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    requests_per_mintue: 5\n", r"keys\[0\]\.requests_per_mintue: Extra inputs"),
        ("    tokens_per_minute: 0\n", r"keys\[0\]\.tokens_per_minute: Input should be greater"),
        ("    max_tokens: 8\n    default_max_tokens: 9\n", "default_max_tokens 9 is above"),
        ("    models: []\n", "models is empty"),
        ("    priority: urgent\n", r"keys\[0\]\.priority"),
    ],
)
def test_a_bad_yaml_key_names_the_entry_and_field(tmp_path: Path, entry: str, message: str) -> None:
    text = f"keys:\n  - name: a\n    key: {hash_key('a')}\n{entry}"
    with pytest.raises(ConfigError, match="ARCHON_AGENT_API_KEYS_FILE") as err:
        ring(tmp_path, text)
    assert err.match(message)


def test_names_are_unique_and_one_key_has_one_name(tmp_path: Path) -> None:
    twice = f"keys:\n  - {{name: a, key: {hash_key('a')}}}\n  - {{name: a, key: {hash_key('b')}}}\n"
    with pytest.raises(ConfigError, match="'a' is given to two keys"):
        ring(tmp_path, twice)
    same = f"keys:\n  - {{name: a, key: {hash_key('a')}}}\n  - {{name: b, key: {hash_key('a')}}}\n"
    with pytest.raises(ConfigError, match="'a' and 'b' are the same key"):
        ring(tmp_path, same)
    with pytest.raises(ConfigError, match="name"):
        ring(tmp_path, f"keys:\n  - {{name: 'bad name', key: {hash_key('a')}}}\n")


def test_requests_per_minute_refuse_with_headers_and_reset_with_the_minute(tmp_path) -> None:
    clock = Clock(T0 + 15)
    lim, alice = limiter(clock), ring(tmp_path, KEYS).metered[0]
    remaining = []
    for _ in range(2):
        grant = run(lim.admit(alice, {"model": "small-1"}, False, 100))
        remaining.append(grant.headers["x-ratelimit-remaining-requests"])
        assert grant.headers["x-ratelimit-limit-requests"] == "2"
        assert grant.headers["x-ratelimit-reset-requests"] == "45s"
        assert "x-ratelimit-limit-tokens" not in grant.headers
        grant.finish(200, {"prompt_tokens": 3, "completion_tokens": 4})
    assert remaining == ["1", "0"]
    with pytest.raises(RateLimitError) as err:
        run(lim.admit(alice, {"model": "small-1"}, False, 100))
    exc = err.value
    assert (exc.status_code, exc.error_type, exc.code) == (429, "requests", "rate_limit_exceeded")
    assert exc.headers["retry-after"] == "45"
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert "limit 2, used 2" in exc.message
    clock.now = T0 + 61  # the next minute
    run(lim.admit(alice, {"model": "small-1"}, False, 100))


def test_tokens_per_minute_budget_and_concurrency(tmp_path: Path) -> None:
    clock = Clock(T0 - 3600)
    lim, bob = limiter(clock), ring(tmp_path, KEYS).metered[1]
    first = run(lim.admit(bob, {"model": "big"}, False, 100))
    with pytest.raises(RateLimitError) as err:  # max_concurrent 1: the first one is open
        run(lim.admit(bob, {"model": "big"}, False, 100))
    assert err.value.headers["retry-after"] == "1"
    first.finish(200, {"prompt_tokens": 20, "completion_tokens": 15})  # 35 >= 30 per minute
    with pytest.raises(RateLimitError) as err:
        run(lim.admit(bob, {"model": "big"}, False, 100))
    assert err.value.error_type == "tokens"
    assert err.value.headers["x-ratelimit-remaining-tokens"] == "0"
    for _ in range(2):  # later minutes: 35 + 35 + 35 >= the daily 100
        clock.now += 60
        grant = run(lim.admit(bob, {"model": "big"}, False, 100))
        assert grant.headers["x-ratelimit-remaining-tokens"] == "30"
        grant.finish(200, {"prompt_tokens": 20, "completion_tokens": 15})
    clock.now += 60
    with pytest.raises(QuotaExceededError) as err:
        run(lim.admit(bob, {"model": "big"}, False, 100))
    exc = err.value
    assert (exc.status_code, exc.error_type) == (429, "insufficient_quota")
    assert exc.code == "insufficient_quota"
    assert "105 of 100" in exc.message
    assert int(exc.headers["retry-after"]) == pytest.approx(3600 + 60 - 180, abs=2)  # to midnight
    (entry,) = run(lim.report([bob]))
    assert entry["today"]["total_tokens"] == 105 and entry["today"]["remaining"] == 0
    assert entry["today"]["models"]["big"] == {
        "requests": 3,
        "prompt_tokens": 60,
        "completion_tokens": 45,
    }
    assert run(lim.budgets([bob])) == [("bob", "daily", 100, 105)]


def test_models_and_max_tokens_shape_the_request(tmp_path: Path) -> None:
    lim, carol = limiter(Clock()), ring(tmp_path, KEYS).metered[2]
    with pytest.raises(ModelNotAllowedError) as err:
        run(lim.admit(carol, {"model": "big"}, False, 10))
    assert (err.value.status_code, err.value.code, err.value.param) == (
        403,
        "model_not_found",
        "model",
    )
    body: dict = {"model": "small-1"}
    grant = run(lim.admit(carol, body, False, 10))
    assert body["max_tokens"] == 16 and grant.changed  # the default
    body = {"model": "small-1", "max_completion_tokens": 64}
    assert not run(lim.admit(carol, body, False, 10)).changed  # at the cap: as sent
    with pytest.raises(InvalidRequestError) as err:
        run(lim.admit(carol, {"model": "small-1", "max_tokens": 65}, False, 10))
    assert err.value.param == "max_tokens" and "above the 64" in err.value.message
    body = {"model": "small-1", "max_tokens": 5, "stream": True}
    grant = run(lim.admit(carol, body, True, 10))
    assert body["stream_options"] == {"include_usage": True} and grant.meter.strip
    body = {"model": "small-1", "max_tokens": 5, "stream_options": {"include_usage": True}}
    grant = run(lim.admit(carol, body, True, 10))
    assert not grant.changed and not grant.meter.strip


def test_the_meter_drops_only_the_usage_chunk_it_asked_for() -> None:
    usage = b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    content = b'{"choices": [{"delta": {"content": "hi"}}], "usage": null}'
    meter = StreamMeter(strip=True)
    assert not meter.drop(content)
    assert meter.drop(usage)
    assert meter.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    kept = StreamMeter(strip=False)
    assert not kept.drop(usage) and kept.usage is not None


def test_a_stream_cut_short_is_estimated(tmp_path: Path) -> None:
    lim, bob = limiter(Clock()), ring(tmp_path, KEYS).metered[1]
    grant = run(lim.admit(bob, {"model": "big", "stream": True}, True, 400))
    for _ in range(7):
        grant.meter.drop(b'{"choices": [{"delta": {"content": "x"}}]}')
    grant.finish(200, estimate=True)
    grant.finish(200, estimate=True)  # once only
    (entry,) = run(lim.report([bob]))
    assert entry["today"]["prompt_tokens"] == 100 and entry["today"]["completion_tokens"] == 7
    assert entry["rate"]["concurrent"] == {"limit": 1, "open": 0}
