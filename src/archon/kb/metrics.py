"""The knowledge base's Prometheus metrics, on the app's own registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from archon.kb.service import KnowledgeBase


class _StateGauges(Collector):
    """Chunks and last successful sync per source, read from the sync state at scrape time."""

    def __init__(self, kb: Callable[[], KnowledgeBase | None]):
        self._kb = kb

    def collect(self) -> Any:
        kb = self._kb()
        chunks = GaugeMetricFamily("archon_kb_chunks", "Chunks in the store.", labels=["source"])
        last = GaugeMetricFamily(
            "archon_kb_last_successful_sync_timestamp_seconds",
            "When each source last synced without error.",
            labels=["source"],
        )
        if kb is not None:
            for row in kb.sources_summary():
                chunks.add_metric([row["name"]], float(row["chunks"]))
                if row["last_success"]:
                    last.add_metric([row["name"]], float(row["last_success"]))
        yield chunks
        yield last


class KbMetrics:
    def __init__(self, registry: CollectorRegistry, kb: Callable[[], KnowledgeBase | None]):
        self.query_seconds = Histogram(
            "archon_kb_query_seconds",
            "Query latency, embedding included.",
            ["mode"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.sync_errors = Counter(
            "archon_kb_sync_errors", "Sources that failed to sync.", ["source"], registry=registry
        )
        self.rerank_total = Counter(
            "archon_kb_rerank",
            "Queries sent to the reranker, by outcome (used, timeout, failed: fused order kept).",
            ["outcome"],
            registry=registry,
        )
        registry.register(_StateGauges(kb))
