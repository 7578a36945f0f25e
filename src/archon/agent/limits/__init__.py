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

The parts: `store.py` (windows, counts, the `Backend` protocol), `memory_backend.py` and
`redis_backend.py` (the two backends), `limiter.py` (the admit decision, refusals, backend
health), `grant.py` (one admitted request and its usage), `report.py` (GET /v1/usage).
"""

from __future__ import annotations

from archon.agent.limits.grant import Grant, StreamMeter, usage_of
from archon.agent.limits.limiter import Limiter
from archon.agent.limits.memory_backend import MemoryBackend
from archon.agent.limits.redis_backend import RedisBackend, redact
from archon.agent.limits.store import Backend, LimitsBackendError, Windows, duration

__all__ = [
    "Backend",
    "Grant",
    "Limiter",
    "LimitsBackendError",
    "MemoryBackend",
    "RedisBackend",
    "StreamMeter",
    "Windows",
    "duration",
    "redact",
    "usage_of",
]
