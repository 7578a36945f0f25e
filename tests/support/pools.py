"""Upstream pools for unit tests: model servers that are not there, marked healthy by hand."""

from __future__ import annotations

from archon.agent.upstreams import UpstreamPool


def healthy_pool(
    n: int, *, affinity: bool = True, models: tuple[str, ...] = ("m",)
) -> UpstreamPool:
    """``n`` upstreams http://u1:8000 ... serving ``models``, all healthy; nothing is started."""
    pool = UpstreamPool(
        [f"http://u{i}:8000" for i in range(1, n + 1)],
        health_interval=5,
        check_timeout=1,
        affinity=affinity,
    )
    for up in pool.upstreams:
        up.healthy, up.models, up.error = True, models, None
    return pool
