"""What a limits backend stores and answers: the fixed windows, a key's counts, the protocol.

Counting is by fixed windows: the minute, the UTC day and the UTC month (`Windows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from archon.agent.auth import ApiKey

# A concurrency lease not refreshed for this long is dropped (an agent that died holding it).
LEASE_TTL = 30.0


class LimitsBackendError(Exception):
    """The shared store could not be read or written."""


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


@dataclass
class Decision:
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

    async def admit(self, key: ApiKey, lease: str, now: float) -> Decision: ...

    def settle(
        self, key: ApiKey, lease: str | None, model: str, prompt: int, completion: int, now: float
    ) -> None:
        """Record an ended request (never blocks, never raises)."""

    async def state(self, keys: list[ApiKey], now: float) -> dict[str, KeyState]: ...
