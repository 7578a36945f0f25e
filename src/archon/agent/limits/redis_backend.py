"""Limits kept in Redis, shared by every agent replica that names the same `redis_url`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from archon.agent.auth import ApiKey
from archon.agent.limits.store import (
    LEASE_TTL,
    Counts,
    Decision,
    KeyState,
    LimitsBackendError,
    Windows,
)

REDIS_TIMEOUT = 0.5  # seconds for a Redis command or connection before it counts as failed


def redact(url: str) -> str:
    """A Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# Admission in one round trip, atomically: budgets and tokens per minute are read, leases
# past their TTL dropped and counted, then the request counted and its lease taken.
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local daily = tonumber(redis.call('GET', KEYS[3]) or '0')
local monthly = tonumber(redis.call('GET', KEYS[4]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local day_budget, month_budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local concurrent, now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local function answer(why) return {why, requests, tokens, daily, monthly} end
if day_budget > 0 and daily >= day_budget then return answer('daily') end
if month_budget > 0 and monthly >= month_budget then return answer('monthly') end
if tpm > 0 and tokens >= tpm then return answer('tokens') end
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - ttl)
  if redis.call('ZCARD', KEYS[5]) >= concurrent then return answer('concurrency') end
end
if rpm > 0 then
  if requests >= rpm then return answer('requests') end
  requests = redis.call('INCR', KEYS[1])
  if requests == 1 then redis.call('EXPIRE', KEYS[1], 120) end
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[5], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[5], ttl)
end
return answer('ok')
"""

_DAY_TTL = 3 * 86400
_MONTH_TTL = 40 * 86400


def _rkey(name: str, *parts: object) -> str:
    # The {name} hash tag keeps one key's counters in one slot (Redis Cluster, Lua).
    return "archon:{" + name + "}:" + ":".join(str(p) for p in parts)


def _counts(raw: dict[bytes, bytes]) -> dict[str, Counts]:
    models: dict[str, Counts] = {}
    for field_name, value in raw.items():
        model, _, kind = field_name.decode().rpartition("|")
        counts = models.setdefault(model, Counts())
        setattr(counts, kind, int(value))
    return models


class RedisBackend:
    """Counters in Redis, shared by every agent replica that names the same ``redis_url``."""

    kind = "redis"

    def __init__(self, url: str, on_error: Callable[[str, BaseException], None]):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self._on_error = on_error
        # No retries inside a request: a failed call is answered at once (fail open or closed),
        # and the next request tries again.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            health_check_interval=0,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
        self._admit = self._redis.register_script(_ADMIT)
        self._leases: dict[str, str] = {}  # open leases of this process -> key name
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except Exception as exc:
            self._on_error("connect", exc)
        self._heartbeat = asyncio.create_task(self._refresh_leases(), name="limits-leases")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for task in list(self._tasks):
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, REDIS_TIMEOUT * 2)
        await self._redis.aclose()

    async def _call(self, operation: str, call: Awaitable[Any]) -> Any:
        import redis.exceptions

        try:
            return await call
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            raise LimitsBackendError(f"{operation}: {type(exc).__name__}: {exc}") from exc

    async def admit(self, key: ApiKey, lease: str, now: float) -> Decision:
        w = Windows.at(now)
        lim = key.limits
        name = key.name
        keys = [
            _rkey(name, "requests", w.minute),
            _rkey(name, "tokens", w.minute),
            _rkey(name, "tokens", "d", w.day),
            _rkey(name, "tokens", "m", w.month),
            _rkey(name, "leases"),
        ]
        args: list[int | str] = [
            lim.requests_per_minute or 0,
            lim.tokens_per_minute or 0,
            lim.daily_token_budget or 0,
            lim.monthly_token_budget or 0,
            lim.max_concurrent or 0,
            int(now * 1000),
            lease,
            int(LEASE_TTL * 1000),
        ]
        why, requests, tokens, daily, monthly = await self._call(
            "admit", self._admit(keys=keys, args=args)
        )
        why = why.decode()
        if why == "ok" and lim.max_concurrent is not None:
            self._leases[lease] = name
        return Decision(None if why == "ok" else why, requests, tokens, daily, monthly)

    def settle(
        self, key: ApiKey, lease: str | None, model: str, prompt: int, completion: int, now: float
    ) -> None:
        task = asyncio.create_task(self._settle(key, lease, model, prompt, completion, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(
        self, key: ApiKey, lease: str | None, model: str, prompt: int, completion: int, now: float
    ) -> None:
        w = Windows.at(now)
        name = key.name
        pipe = self._redis.pipeline(transaction=True)
        if lease is not None and self._leases.pop(lease, None) is not None:
            pipe.zrem(_rkey(name, "leases"), lease)
        spent = prompt + completion
        if spent:
            for counter, ttl in (
                (_rkey(name, "tokens", w.minute), 120),
                (_rkey(name, "tokens", "d", w.day), _DAY_TTL),
                (_rkey(name, "tokens", "m", w.month), _MONTH_TTL),
            ):
                pipe.incrby(counter, spent)
                pipe.expire(counter, ttl)
        for usage, ttl in (
            (_rkey(name, "usage", "d", w.day), _DAY_TTL),
            (_rkey(name, "usage", "m", w.month), _MONTH_TTL),
        ):
            pipe.hincrby(usage, f"{model}|requests", 1)
            if prompt:
                pipe.hincrby(usage, f"{model}|prompt_tokens", prompt)
            if completion:
                pipe.hincrby(usage, f"{model}|completion_tokens", completion)
            pipe.expire(usage, ttl)
        try:
            await self._call("settle", pipe.execute())
        except LimitsBackendError as exc:
            self._on_error("settle", exc)

    async def _refresh_leases(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            if not self._leases:
                continue
            now = int(time.time() * 1000)
            pipe = self._redis.pipeline(transaction=False)
            for lease, name in list(self._leases.items()):
                pipe.zadd(_rkey(name, "leases"), {lease: now}, xx=True)
                pipe.pexpire(_rkey(name, "leases"), int(LEASE_TTL * 1000))
            try:
                await self._call("leases", pipe.execute())
            except LimitsBackendError as exc:
                self._on_error("leases", exc)

    async def state(self, keys: list[ApiKey], now: float) -> dict[str, KeyState]:
        w = Windows.at(now)
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            name = key.name
            pipe.get(_rkey(name, "requests", w.minute))
            pipe.get(_rkey(name, "tokens", w.minute))
            pipe.zcount(_rkey(name, "leases"), int((now - LEASE_TTL) * 1000), "+inf")
            pipe.hgetall(_rkey(name, "usage", "d", w.day))
            pipe.hgetall(_rkey(name, "usage", "m", w.month))
        replies = await self._call("usage", pipe.execute())
        out = {}
        for n, key in enumerate(keys):
            requests, tokens, open_, today, month = replies[n * 5 : n * 5 + 5]
            out[key.name] = KeyState(
                int(requests or 0), int(tokens or 0), int(open_), _counts(today), _counts(month)
            )
        return out
