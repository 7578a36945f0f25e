"""Per-key limits and usage: who may ask for what, how often, and how much they used.

Only keys declared in the YAML keys file (``ApiKey.metered``) pass through here; with none,
the gateway never calls this module and the hot path is as before.

Counting is by fixed windows: the minute, the UTC day and the UTC month. Requests per minute
are counted when admitted; tokens (prompt + completion, from the model server's ``usage``) when
the answer ends, so tokens per minute and budgets stop the next request, not the one that
crosses them. Concurrent requests are leases held until the answer ends.

State lives in this process (``MemoryBackend``) or in Redis (``RedisBackend``, shared by every
replica). When Redis fails the agent answers anyway (fail open) or refuses with 503 (fail
closed), counts ``archon_agent_limits_backend_errors_total`` and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from archon.agent.auth import ApiKey
from archon.agent.metrics import AgentMetrics
from archon.agent.upstreams import UpstreamPool
from archon.errors import (
    InvalidRequestError,
    ModelNotAllowedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
)

log = logging.getLogger("archon.agent")

# A concurrency lease not refreshed for this long is dropped (an agent that died holding it).
LEASE_TTL = 30.0
REDIS_TIMEOUT = 0.5  # seconds for a Redis command or connection before it counts as failed
BREAKER = 1.0  # after a failure, seconds the agent does not ask Redis on the request path
LOG_EVERY = 30.0  # seconds between log lines while the backend keeps failing


class LimitsBackendError(Exception):
    """The shared store could not be read or written."""


# -- windows and formats ------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    minute: int
    day: str
    month: str
    minute_reset: float  # seconds until each window ends
    day_reset: float
    month_reset: float

    @classmethod
    def at(cls, now: float) -> Windows:
        moment = datetime.fromtimestamp(now, UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight.replace(day=1)
        next_month = (first + timedelta(days=32)).replace(day=1)
        return cls(
            minute=int(now // 60),
            day=moment.strftime("%Y-%m-%d"),
            month=moment.strftime("%Y-%m"),
            minute_reset=60.0 - now % 60.0,
            day_reset=(midnight + timedelta(days=1)).timestamp() - now,
            month_reset=next_month.timestamp() - now,
        )


def duration(seconds: float) -> str:
    """As OpenAI writes x-ratelimit-reset-*: 20ms, 1s, 6m0s, 1h2m3s."""
    seconds = round(seconds, 3)
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


def redact(url: str) -> str:
    """A Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- what a backend stores ----------------------------------------------------------------


@dataclass
class Admission:
    refused: str | None  # requests, tokens, concurrency, daily, monthly; None: admitted
    requests: int  # counted in this minute (this one included when admitted)
    tokens: int  # used in this minute
    daily: int  # tokens used today (UTC)
    monthly: int  # tokens used this month (UTC)


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class KeyState:
    """What one key used: this minute, today and this month (per model), leases open now."""

    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    open: int = 0
    today: dict[str, Counts] = field(default_factory=dict)
    month: dict[str, Counts] = field(default_factory=dict)


class Backend(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(self, key: ApiKey, lease: str, now: float) -> Admission: ...

    def settle(
        self, key: ApiKey, lease: str | None, model: str, prompt: int, completion: int, now: float
    ) -> None:
        """Record an ended request (never blocks, never raises)."""

    async def state(self, keys: list[ApiKey], now: float) -> dict[str, KeyState]: ...


class MemoryBackend:
    """One process's counters: exact for one replica, per replica with several."""

    kind = "memory"

    def __init__(self) -> None:
        self._requests: dict[str, tuple[int, int]] = {}  # name -> (minute, count)
        self._tokens: dict[str, tuple[int, int]] = {}
        self._daily: dict[str, tuple[str, int]] = {}
        self._monthly: dict[str, tuple[str, int]] = {}
        self._open: dict[str, int] = {}
        self._usage: dict[tuple[str, str], tuple[str, dict[str, Counts]]] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @staticmethod
    def _get(table: dict[str, tuple[Any, int]], name: str, window: Any) -> int:
        held = table.get(name)
        return held[1] if held is not None and held[0] == window else 0

    async def admit(self, key: ApiKey, lease: str, now: float) -> Admission:
        w = Windows.at(now)
        lim = key.limits
        name = key.name
        requests = self._get(self._requests, name, w.minute)
        tokens = self._get(self._tokens, name, w.minute)
        daily = self._get(self._daily, name, w.day)
        monthly = self._get(self._monthly, name, w.month)
        state = Admission(None, requests, tokens, daily, monthly)
        if lim.daily_token_budget is not None and daily >= lim.daily_token_budget:
            state.refused = "daily"
        elif lim.monthly_token_budget is not None and monthly >= lim.monthly_token_budget:
            state.refused = "monthly"
        elif lim.tokens_per_minute is not None and tokens >= lim.tokens_per_minute:
            state.refused = "tokens"
        elif lim.max_concurrent is not None and self._open.get(name, 0) >= lim.max_concurrent:
            state.refused = "concurrency"
        elif lim.requests_per_minute is not None:
            if requests >= lim.requests_per_minute:
                state.refused = "requests"
            else:
                state.requests = requests + 1
                self._requests[name] = (w.minute, state.requests)
        if state.refused is None and lim.max_concurrent is not None:
            self._open[name] = self._open.get(name, 0) + 1
        return state

    def settle(
        self, key: ApiKey, lease: str | None, model: str, prompt: int, completion: int, now: float
    ) -> None:
        name = key.name
        if lease is not None and key.limits.max_concurrent is not None:
            self._open[name] = max(0, self._open.get(name, 0) - 1)
        w = Windows.at(now)
        spent = prompt + completion
        if spent:
            self._tokens[name] = (w.minute, self._get(self._tokens, name, w.minute) + spent)
            self._daily[name] = (w.day, self._get(self._daily, name, w.day) + spent)
            self._monthly[name] = (w.month, self._get(self._monthly, name, w.month) + spent)
        for period, window in (("day", w.day), ("month", w.month)):
            held = self._usage.get((name, period))
            models = held[1] if held is not None and held[0] == window else {}
            models.setdefault(model, Counts()).add(Counts(1, prompt, completion))
            self._usage[(name, period)] = (window, models)

    async def state(self, keys: list[ApiKey], now: float) -> dict[str, KeyState]:
        w = Windows.at(now)
        out = {}
        for key in keys:
            name = key.name
            day = self._usage.get((name, "day"))
            month = self._usage.get((name, "month"))
            out[name] = KeyState(
                requests_this_minute=self._get(self._requests, name, w.minute),
                tokens_this_minute=self._get(self._tokens, name, w.minute),
                open=self._open.get(name, 0),
                today=dict(day[1]) if day is not None and day[0] == w.day else {},
                month=dict(month[1]) if month is not None and month[0] == w.month else {},
            )
        return out


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

    async def admit(self, key: ApiKey, lease: str, now: float) -> Admission:
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
        args = [
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
        return Admission(None if why == "ok" else why, requests, tokens, daily, monthly)

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


# -- the gateway's side -------------------------------------------------------------------


def usage_of(raw: bytes) -> dict[str, Any] | None:
    """The ``usage`` of a non-streamed answer, if it has one."""
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


class StreamMeter:
    """Watches a relayed stream's events for the usage chunk (and drops it when the agent asked
    for it on the client's behalf); counts events to estimate a stream cut short."""

    __slots__ = ("events", "strip", "usage")

    def __init__(self, strip: bool):
        self.strip = strip
        self.usage: dict[str, Any] | None = None
        self.events = 0

    def drop(self, payload: bytes) -> bool:
        """See one data payload; True: do not pass it on."""
        self.events += 1
        if b'"prompt_tokens"' not in payload:
            return False
        try:
            event = json.loads(payload)
        except ValueError:
            return False
        usage = event.get("usage") if isinstance(event, dict) else None
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return self.strip and not event.get("choices")


class Grant:
    """One admitted request of a metered key: its rate-limit headers, its lease, and how its
    tokens get counted when it ends (``finish``, once)."""

    __slots__ = ("changed", "done", "headers", "key", "lease", "limiter", "meter", "model", "size")

    def __init__(
        self,
        limiter: Limiter,
        key: ApiKey,
        model: str,
        lease: str | None,
        headers: dict[str, str],
        size: int,
        strip: bool,
        changed: bool,
    ):
        self.limiter, self.key, self.model, self.lease = limiter, key, model, lease
        self.headers = headers
        self.size = size  # request body bytes: a prompt estimate when no usage comes back
        self.meter = StreamMeter(strip)
        self.changed = changed  # the body was shaped (max_tokens, include_usage): re-serialise
        self.done = False

    def finish(
        self, status: int, usage: dict[str, Any] | None = None, estimate: bool = False
    ) -> None:
        """Count the ended request once: tokens from ``usage`` (or the stream's usage chunk);
        with ``estimate``, an answer that brought none is estimated."""
        if self.done:
            return
        self.done = True
        usage = usage if usage is not None else self.meter.usage
        prompt = completion = 0
        if usage is not None:
            prompt = _int(usage.get("prompt_tokens"))
            completion = _int(usage.get("completion_tokens"))
        elif estimate:
            # A stream cut short (or a model server that ignores include_usage) brought no
            # usage: about one token an event, four bytes of request a prompt token.
            prompt, completion = self.size // 4, self.meter.events
        self.limiter.settle(self, status, prompt, completion)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Limiter:
    """Checks and counts the requests of metered keys (see the module's docstring)."""

    def __init__(
        self,
        backend: Backend,
        metrics: AgentMetrics,
        pool: UpstreamPool,
        *,
        fail_closed: bool,
        clock: Callable[[], float] = time.time,
    ):
        self.backend = backend
        self.metrics = metrics
        self.pool = pool
        self.fail_closed = fail_closed
        self.clock = clock
        self._instance = uuid.uuid4().hex[:12]
        self._sequence = itertools.count()
        self._down_until = 0.0
        self._failing_since: float | None = None
        self._errors_unlogged = 0
        self._last_log = 0.0

    # -- backend health ----------------------------------------------------------------

    def backend_failed(self, operation: str, exc: BaseException) -> None:
        """Count and log (at most every LOG_EVERY seconds) a failure of the shared store."""
        self.metrics.limits_backend_errors.labels(operation).inc()
        now = time.monotonic()
        self._down_until = now + BREAKER
        if self._failing_since is None:
            self._failing_since = now
        self._errors_unlogged += 1
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            action = (
                "refusing requests with 503 (limits_fail_closed=true)"
                if self.fail_closed
                else "answering without limits (limits_fail_closed=false)"
            )
            where = redact(getattr(self.backend, "url", self.backend.kind))
            log.warning(
                "limits backend %s failed (%d errors, last in %s: %s); %s",
                where,
                self._errors_unlogged,
                operation,
                exc,
                action,
            )
            self._errors_unlogged = 0

    def _backend_ok(self) -> None:
        if self._failing_since is not None:
            log.info("limits backend is back after %.0fs", time.monotonic() - self._failing_since)
            self._failing_since = None
            self._errors_unlogged = 0
            self._last_log = 0.0

    # -- requests ------------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """The model as a metric label: a name a model server serves, or "other"."""
        if model is None:
            return "default"
        for up in self.pool.upstreams:
            if up.models and model in up.models:
                return model
        return "other"

    def shape(self, key: ApiKey, data: dict[str, Any], stream: bool) -> tuple[bool, bool]:
        """Apply the key's model list and max_tokens cap/default to a parsed body; ask for the
        stream's usage. Returns (changed, usage asked on the client's behalf)."""
        model = data.get("model")
        if not key.may_use(model):
            raise ModelNotAllowedError(
                f"The key '{key.name}' may not use the model '{model}'; its models: "
                + ", ".join(key.models or ()),
                param="model",
            )
        changed = strip = False
        cap = key.max_tokens
        asked = [f for f in ("max_tokens", "max_completion_tokens") if data.get(f) is not None]
        for name in asked:
            value = data[name]
            if cap is not None and isinstance(value, int) and value > cap:
                raise InvalidRequestError(
                    f"{name} is {value}, above the {cap} this key may ask for",
                    param=name,
                    code="max_tokens_above_limit",
                )
        if not asked and (key.default_max_tokens or cap) is not None:
            data["max_tokens"] = key.default_max_tokens or cap
            changed = True
        if stream:
            options = data.get("stream_options")
            if options is None or (isinstance(options, dict) and not options.get("include_usage")):
                data["stream_options"] = {**(options or {}), "include_usage": True}
                changed = strip = True
        return changed, strip

    async def admit(self, key: ApiKey, data: dict[str, Any], stream: bool, size: int) -> Grant:
        """Shape the body, then admit the request or raise the 403/400/429 (or, when the
        store is down and the agent fails closed, 503) that says why not."""
        model = data.get("model")
        label = self.model_label(model if isinstance(model, str) else None)
        try:
            changed, strip = self.shape(key, data, stream)
        except (ModelNotAllowedError, InvalidRequestError) as exc:
            self.metrics.key_requests.labels(key.name, label, str(exc.status_code)).inc()
            raise
        lease = f"{self._instance}:{next(self._sequence)}"
        if not key.limits.any:
            return Grant(self, key, label, None, {}, size, strip, changed)
        now = self.clock()
        if time.monotonic() < self._down_until:
            return self._without_backend(key, label, size, strip, changed)
        try:
            admission = await self.backend.admit(key, lease, now)
        except LimitsBackendError as exc:
            self.backend_failed("admit", exc)
            return self._without_backend(key, label, size, strip, changed)
        self._backend_ok()
        windows = Windows.at(now)
        headers = self._headers(key, admission, windows)
        if admission.refused is not None:
            self.metrics.rate_limited.labels(key.name, _LIMIT_KIND[admission.refused]).inc()
            self.metrics.key_requests.labels(key.name, label, "429").inc()
            raise self._refusal(key, admission, windows, headers)
        held = lease if key.limits.max_concurrent is not None else None
        return Grant(self, key, label, held, headers, size, strip, changed)

    def _without_backend(
        self, key: ApiKey, label: str, size: int, strip: bool, changed: bool
    ) -> Grant:
        if self.fail_closed:
            self.metrics.key_requests.labels(key.name, label, "503").inc()
            raise ServiceUnavailableError(
                "The agent cannot check this key's limits now (its limits store is "
                "unreachable) and is set to refuse meanwhile (limits_fail_closed)",
                code="limits_unavailable",
                headers={"retry-after": "1"},
            )
        return Grant(self, key, label, None, {}, size, strip, changed)

    def settle(self, grant: Grant, status: int, prompt: int, completion: int) -> None:
        key = grant.key
        self.metrics.key_requests.labels(key.name, grant.model, str(status)).inc()
        if prompt:
            self.metrics.tokens.labels(key.name, grant.model, "prompt").inc(prompt)
        if completion:
            self.metrics.tokens.labels(key.name, grant.model, "completion").inc(completion)
        self.backend.settle(key, grant.lease, grant.model, prompt, completion, self.clock())

    @staticmethod
    def _headers(key: ApiKey, admission: Admission, windows: Windows) -> dict[str, str]:
        lim = key.limits
        headers = {}
        reset = duration(windows.minute_reset)
        if lim.requests_per_minute is not None:
            headers["x-ratelimit-limit-requests"] = str(lim.requests_per_minute)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, lim.requests_per_minute - admission.requests)
            )
            headers["x-ratelimit-reset-requests"] = reset
        if lim.tokens_per_minute is not None:
            headers["x-ratelimit-limit-tokens"] = str(lim.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens"] = str(
                max(0, lim.tokens_per_minute - admission.tokens)
            )
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    @staticmethod
    def _refusal(
        key: ApiKey, admission: Admission, windows: Windows, headers: dict[str, str]
    ) -> Exception:
        lim, name, why = key.limits, key.name, admission.refused
        if why in ("daily", "monthly"):
            budget = lim.daily_token_budget if why == "daily" else lim.monthly_token_budget
            used = admission.daily if why == "daily" else admission.monthly
            wait = windows.day_reset if why == "daily" else windows.month_reset
            return QuotaExceededError(
                f"The key '{name}' has used its {why} token budget ({used} of {budget} "
                f"tokens); it renews in {duration(wait)} (UTC).",
                headers={**headers, "retry-after": str(math.ceil(wait))},
            )
        if why == "concurrency":
            return RateLimitError(
                f"Rate limit reached for the key '{name}' on concurrent requests: limit "
                f"{lim.max_concurrent}. Try again when one of them has finished.",
                error_type="requests",
                headers={**headers, "retry-after": "1"},
            )
        wait = windows.minute_reset
        if why == "tokens":
            what, limit, used = "tokens per minute", lim.tokens_per_minute, admission.tokens
        else:
            what, limit, used = "requests per minute", lim.requests_per_minute, admission.requests
        kind = "tokens" if why == "tokens" else "requests"
        return RateLimitError(
            f"Rate limit reached for the key '{name}' on {what}: limit {limit}, used {used}. "
            f"Try again in {duration(wait)}.",
            error_type=kind,
            headers={**headers, "retry-after": str(max(1, math.ceil(wait)))},
        )

    # -- reports -------------------------------------------------------------------------

    async def report(self, keys: Iterable[ApiKey]) -> list[dict[str, Any]]:
        """Usage and limits of ``keys`` as GET /v1/usage shows them."""
        keys = list(keys)
        if not keys:
            return []
        now = self.clock()
        try:
            states = await self.backend.state(keys, now)
        except LimitsBackendError as exc:
            self.backend_failed("usage", exc)
            raise ServiceUnavailableError(
                "The agent cannot read usage now: its limits store is unreachable",
                code="limits_unavailable",
                headers={"retry-after": "1"},
            ) from None
        w = Windows.at(now)
        return [_describe(key, states[key.name], w) for key in keys]

    async def budgets(self, keys: Iterable[ApiKey]) -> list[tuple[str, str, int, int]]:
        """(key, period, budget, used) for every budget of ``keys``, for the gauges."""
        keys = [k for k in keys if k.limits.daily_token_budget or k.limits.monthly_token_budget]
        if not keys:
            return []
        try:
            states = await self.backend.state(keys, self.clock())
        except LimitsBackendError as exc:
            self.backend_failed("usage", exc)
            return []
        out = []
        for key in keys:
            state = states[key.name]
            for period, budget, counts in (
                ("daily", key.limits.daily_token_budget, state.today),
                ("monthly", key.limits.monthly_token_budget, state.month),
            ):
                if budget:
                    used = sum(c.prompt_tokens + c.completion_tokens for c in counts.values())
                    out.append((key.name, period, budget, used))
        return out


_LIMIT_KIND = {
    "requests": "requests",
    "tokens": "tokens",
    "concurrency": "concurrency",
    "daily": "budget",
    "monthly": "budget",
}


def _period(models: dict[str, Counts], budget: int | None, label: str, reset: float) -> dict:
    total = Counts()
    for counts in models.values():
        total.add(counts)
    tokens = total.prompt_tokens + total.completion_tokens
    out: dict[str, Any] = {
        "period": label,
        "requests": total.requests,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": tokens,
        "budget": budget,
        "remaining": None if budget is None else max(0, budget - tokens),
        "resets_in": duration(reset),
        "models": {
            model: {
                "requests": c.requests,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
            for model, c in sorted(models.items())
        },
    }
    return out


def _describe(key: ApiKey, state: KeyState, w: Windows) -> dict[str, Any]:
    lim = key.limits
    rate: dict[str, Any] = {}
    if lim.requests_per_minute is not None:
        rate["requests"] = {
            "limit": lim.requests_per_minute,
            "remaining": max(0, lim.requests_per_minute - state.requests_this_minute),
            "reset": duration(w.minute_reset),
        }
    if lim.tokens_per_minute is not None:
        rate["tokens"] = {
            "limit": lim.tokens_per_minute,
            "remaining": max(0, lim.tokens_per_minute - state.tokens_this_minute),
            "reset": duration(w.minute_reset),
        }
    if lim.max_concurrent is not None:
        rate["concurrent"] = {"limit": lim.max_concurrent, "open": state.open}
    return {
        "key": key.name,
        "priority": key.priority,
        "admin": key.admin,
        "models": list(key.models) if key.models is not None else None,
        "max_tokens": key.max_tokens,
        "default_max_tokens": key.default_max_tokens,
        "limits": lim.describe(),
        "rate": rate,
        "today": _period(state.today, lim.daily_token_budget, w.day, w.day_reset),
        "month": _period(state.month, lim.monthly_token_budget, w.month, w.month_reset),
    }


def make_backend(redis_url: str | None, on_error: Callable[[str, BaseException], None]) -> Backend:
    if redis_url:
        return RedisBackend(redis_url, on_error)
    return MemoryBackend()
