"""The admit decision for a metered key: shape the body, ask the backend, refuse or grant;
count the ended request; and the backend's health (fail open or closed)."""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from archon.agent.auth import ApiKey
from archon.agent.limits.grant import Grant
from archon.agent.limits.memory_backend import MemoryBackend
from archon.agent.limits.redis_backend import RedisBackend, redact
from archon.agent.limits.report import describe_key
from archon.agent.limits.store import Backend, Decision, LimitsBackendError, Windows, duration
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

BREAKER = 1.0  # after a failure, seconds the agent does not ask Redis on the request path
LOG_EVERY = 30.0  # seconds between log lines while the backend keeps failing


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

    @classmethod
    def connect(
        cls,
        redis_url: str | None,
        metrics: AgentMetrics,
        pool: UpstreamPool,
        *,
        fail_closed: bool,
    ) -> Limiter:
        """Counting in Redis at ``redis_url`` (its failures reported here), else in process."""
        limiter = cls(MemoryBackend(), metrics, pool, fail_closed=fail_closed)
        if redis_url:
            limiter.backend = RedisBackend(redis_url, limiter.backend_failed)
        return limiter

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

    def shape(
        self, key: ApiKey, data: dict[str, Any], stream: bool, generates: bool = True
    ) -> tuple[bool, bool]:
        """Apply the key's model list and max_tokens cap/default to a parsed body; ask for the
        stream's usage. Returns (changed, usage asked on the client's behalf). A request that
        ``generates`` nothing (embeddings) gets only the model check."""
        model = data.get("model")
        if not key.may_use(model):
            raise ModelNotAllowedError(
                f"The key '{key.name}' may not use the model '{model}'; its models: "
                + ", ".join(key.models or ()),
                param="model",
            )
        changed = strip = False
        if not generates:
            return changed, strip
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

    async def admit(
        self, key: ApiKey, data: dict[str, Any], stream: bool, size: int, generates: bool = True
    ) -> Grant:
        """Shape the body, then admit the request or raise the 403/400/429 (or, when the
        store is down and the agent fails closed, 503) that says why not."""
        model = data.get("model")
        label = self.model_label(model if isinstance(model, str) else None)
        try:
            changed, strip = self.shape(key, data, stream, generates)
        except (ModelNotAllowedError, InvalidRequestError) as exc:
            self._count(key, label, str(exc.status_code))
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
            self._count(key, label, "429")
            raise self._refusal(key, admission, windows, headers)
        held = lease if key.limits.max_concurrent is not None else None
        return Grant(self, key, label, held, headers, size, strip, changed)

    def _without_backend(
        self, key: ApiKey, label: str, size: int, strip: bool, changed: bool
    ) -> Grant:
        if self.fail_closed:
            self._count(key, label, "503")
            raise ServiceUnavailableError(
                "The agent cannot check this key's limits now (its limits store is "
                "unreachable) and is set to refuse meanwhile (limits_fail_closed)",
                code="limits_unavailable",
                headers={"retry-after": "1"},
            )
        return Grant(self, key, label, None, {}, size, strip, changed)

    def _count(self, key: ApiKey, model: str, code: str) -> None:
        """One request of ``key``, under its name and each of its groups."""
        self.metrics.key_requests.labels(key.name, model, code).inc()
        for group in key.groups:
            self.metrics.group_requests.labels(group, model, code).inc()

    def settle(self, grant: Grant, status: int, prompt: int, completion: int) -> None:
        key = grant.key
        self._count(key, grant.model, str(status))
        for kind, tokens in (("prompt", prompt), ("completion", completion)):
            if tokens:
                self.metrics.tokens.labels(key.name, grant.model, kind).inc(tokens)
                for group in key.groups:
                    self.metrics.group_tokens.labels(group, grant.model, kind).inc(tokens)
        self.backend.settle(key, grant.lease, grant.model, prompt, completion, self.clock())

    @staticmethod
    def _headers(key: ApiKey, admission: Decision, windows: Windows) -> dict[str, str]:
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
        key: ApiKey, admission: Decision, windows: Windows, headers: dict[str, str]
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
        return [describe_key(key, states[key.name], w) for key in keys]

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
