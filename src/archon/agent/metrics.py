"""The agent's Prometheus metrics (prefix ``archon_agent_``), one registry per app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from archon.agent.rag import KnowledgeBaseClient
from archon.agent.upstreams import UpstreamPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class _PoolGauges(Collector):
    """Read the pool's state at scrape time instead of updating gauges on every request."""

    def __init__(self, pool: UpstreamPool, kb: KnowledgeBaseClient | None):
        self.pool = pool
        self.kb = kb
        self.queue_depth: Callable[[], dict[str, int]] | None = None  # set by the admission

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "archon_agent_upstream_healthy",
            "1 when the upstream passed its last health check.",
            labels=["upstream"],
        )
        in_flight = GaugeMetricFamily(
            "archon_agent_upstream_in_flight",
            "Requests the agent has open to the upstream.",
            labels=["upstream"],
        )
        for up in self.pool.upstreams:
            healthy.add_metric([up.url], 1.0 if up.healthy else 0.0)
            in_flight.add_metric([up.url], float(up.in_flight))
        yield healthy
        yield in_flight
        depth = GaugeMetricFamily(
            "archon_agent_queue_depth",
            "Requests waiting for a free upstream, by priority class (absent without a queue).",
            labels=["priority"],
        )
        if self.queue_depth is not None:
            for priority, count in self.queue_depth().items():
                depth.add_metric([priority], float(count))
        yield depth
        kb_up = GaugeMetricFamily(
            "archon_agent_knowledge_base_up",
            "1 when the last knowledge-base call or check succeeded (absent when RAG is off).",
        )
        if self.kb is not None and self.kb.up is not None:
            kb_up.add_metric([], 1.0 if self.kb.up else 0.0)
        yield kb_up


class _BudgetGauges(Collector):
    """Token budgets of the keys and what each used in the current period (UTC day or month),
    as read from the limits store just before the scrape (AgentMetrics.budgets)."""

    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        budget = GaugeMetricFamily(
            "archon_agent_key_budget_tokens",
            "A key's token budget for the period (daily or monthly).",
            labels=["key", "period"],
        )
        used = GaugeMetricFamily(
            "archon_agent_key_budget_used_tokens",
            "Tokens a key used in the current period (UTC day or month), from the limits store.",
            labels=["key", "period"],
        )
        for key, period, limit, spent in self.metrics.budgets:
            budget.add_metric([key, period], float(limit))
            used.add_metric([key, period], float(spent))
        yield budget
        yield used


class AgentMetrics:
    def __init__(
        self, registry: CollectorRegistry, pool: UpstreamPool, kb: KnowledgeBaseClient | None
    ):
        self.registry = registry
        r = self.registry
        self.request_seconds = Histogram(
            "archon_agent_request_duration_seconds",
            "Time from request to the end of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "archon_agent_requests",
            "Requests answered, by HTTP status.",
            ["route", "code"],
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "archon_agent_time_to_first_token_seconds",
            "Time from request to the first streamed content chunk (retrieval included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retrieval_seconds = Histogram(
            "archon_agent_retrieval_duration_seconds",
            "Knowledge-base query latency as the agent sees it.",
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.rag = Counter(
            "archon_agent_rag_requests",
            "Chat requests by retrieval outcome: used, none (nothing found), degraded "
            "(knowledge base down or slow), off.",
            ["outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "archon_agent_upstream_errors",
            "Upstream failures: connect, status (503 before the first byte), timeout, midstream.",
            ["upstream", "kind"],
            registry=r,
        )
        # Per key (names from the keys file, never the keys) and model (a served model's name,
        # "other" for names no model server serves): a bounded label set.
        self.key_requests = Counter(
            "archon_agent_key_requests",
            "Requests of keys named in the keys file, by key, model and HTTP status.",
            ["key", "model", "code"],
            registry=r,
        )
        self.tokens = Counter(
            "archon_agent_tokens",
            "Tokens of keys named in the keys file (the model server's usage), by kind.",
            ["key", "model", "kind"],
            registry=r,
        )
        # Per group of the key (the keys file's groups; a key of two groups counts in both).
        self.group_requests = Counter(
            "archon_agent_group_requests",
            "Requests of keys named in the keys file, by the key's group, model and HTTP status.",
            ["group", "model", "code"],
            registry=r,
        )
        self.group_tokens = Counter(
            "archon_agent_group_tokens",
            "Tokens of keys named in the keys file, by the key's group, model and kind.",
            ["group", "model", "kind"],
            registry=r,
        )
        self.rate_limited = Counter(
            "archon_agent_rate_limited",
            "Requests refused with 429, by key and limit (requests, tokens, concurrency, budget).",
            ["key", "limit"],
            registry=r,
        )
        self.limits_backend_errors = Counter(
            "archon_agent_limits_backend_errors",
            "Failed calls to the limits store (Redis), by operation (connect, admit, settle, "
            "leases, usage).",
            ["operation"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "archon_agent_queue_wait_seconds",
            "Time a request waited in the admission queue for a free upstream, by priority.",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "archon_agent_shed",
            "Requests refused by the admission queue, by priority and reason (queue_full, "
            "timeout, shed for a higher priority).",
            ["priority", "reason"],
            registry=r,
        )
        self.budgets: list[tuple[str, str, int, int]] = []  # (key, period, budget, used)
        for outcome in ("used", "none", "degraded", "off"):
            self.rag.labels(outcome)
        self.pool_gauges = _PoolGauges(pool, kb)
        r.register(self.pool_gauges)
        r.register(_BudgetGauges(self))

    def observe(self, route: str, status: int, began: float) -> None:
        """One answered request: its duration since ``began`` (perf_counter) and status."""
        self.request_seconds.labels(route).observe(time.perf_counter() - began)
        self.requests.labels(route, str(status)).inc()
