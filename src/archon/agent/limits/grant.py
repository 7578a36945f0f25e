"""A metered request's side of the limits: its grant, and the usage read from its answer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from archon.agent.auth import ApiKey

if TYPE_CHECKING:
    from archon.agent.limits.limiter import Limiter


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
