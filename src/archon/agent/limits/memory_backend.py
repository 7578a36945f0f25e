"""Limits kept in this process: exact for one replica, counted per replica with several."""

from __future__ import annotations

from typing import Any

from archon.agent.auth import ApiKey
from archon.agent.limits.store import Counts, Decision, KeyState, Windows


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

    async def admit(self, key: ApiKey, lease: str, now: float) -> Decision:
        w = Windows.at(now)
        lim = key.limits
        name = key.name
        requests = self._get(self._requests, name, w.minute)
        tokens = self._get(self._tokens, name, w.minute)
        daily = self._get(self._daily, name, w.day)
        monthly = self._get(self._monthly, name, w.month)
        state = Decision(None, requests, tokens, daily, monthly)
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
