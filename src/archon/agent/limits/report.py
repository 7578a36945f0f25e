"""A key's usage and limits as GET /v1/usage shows them."""

from __future__ import annotations

from typing import Any

from archon.agent.auth import ApiKey
from archon.agent.limits.store import Counts, KeyState, Windows, duration


def _period(
    models: dict[str, Counts], budget: int | None, label: str, reset: float
) -> dict[str, Any]:
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


def describe_key(key: ApiKey, state: KeyState, w: Windows) -> dict[str, Any]:
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
        "groups": list(key.groups),
        "limits": lim.describe(),
        "rate": rate,
        "today": _period(state.today, lim.daily_token_budget, w.day, w.day_reset),
        "month": _period(state.month, lim.monthly_token_budget, w.month, w.month_reset),
    }


_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def describe_groups(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Usage per group, summed over the keys of ``entries`` (``describe_key``'s): a key of two
    groups counts in both. Only the keys the caller may see are summed."""
    groups: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for group in entry.get("groups") or []:
            out = groups.setdefault(
                group,
                {
                    "group": group,
                    "keys": [],
                    "today": dict.fromkeys(_TOTALS, 0),
                    "month": dict.fromkeys(_TOTALS, 0),
                },
            )
            out["keys"].append(entry["key"])
            for period in ("today", "month"):
                for name in _TOTALS:
                    out[period][name] += entry[period][name]
    return [groups[name] for name in sorted(groups)]
