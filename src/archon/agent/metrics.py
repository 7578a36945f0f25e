"""The agent's Prometheus metrics (prefix ``archon_agent_``), one registry per app."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
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
        kb_up = GaugeMetricFamily(
            "archon_agent_knowledge_base_up",
            "1 when the last knowledge-base call or check succeeded (absent when RAG is off).",
        )
        if self.kb is not None and self.kb.up is not None:
            kb_up.add_metric([], 1.0 if self.kb.up else 0.0)
        yield kb_up


class AgentMetrics:
    def __init__(self, pool: UpstreamPool, kb: KnowledgeBaseClient | None):
        disable_created_metrics()
        self.registry = CollectorRegistry()
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
        for outcome in ("used", "none", "degraded", "off"):
            self.rag.labels(outcome)
        r.register(_PoolGauges(pool, kb))
