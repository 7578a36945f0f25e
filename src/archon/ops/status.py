"""`archon status`: health, served model and a latency/throughput summary of a running service.

Reads only the service's public endpoints (/health, /v1/models, /metrics), so it works against
Archon's CPU engine and vLLM alike: both export the same metric names.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Status:
    url: str
    reachable: bool
    healthy: bool = False
    health: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float | None] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_metrics(text: str) -> Samples:
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return samples


def histogram_quantile(q: float, samples: Samples, name: str) -> float | None:
    """Prometheus' histogram_quantile over the buckets of all label sets, since process start."""
    by_le: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(f"{name}_bucket", []):
        by_le[float(labels["le"])] += value
    if not by_le:
        return None
    bounds = sorted(by_le)
    total = by_le[bounds[-1]]
    if total == 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = by_le[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            width = count - previous_count
            fraction = (rank - previous_count) / width if width else 1.0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound


def sum_of(samples: Samples, name: str) -> float | None:
    values = [v for _, v in samples.get(name, [])]
    return sum(values) if values else None


def _max(samples: Samples, name: str) -> float | None:
    values = [v for _, v in samples.get(name, [])]
    return max(values) if values else None


def collect(url: str, *, interval: float = 2.0, timeout: float = 5.0) -> Status:
    url = url.rstrip("/")
    status = Status(url=url, reachable=False)
    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            health = client.get("/health")
            status.reachable = True
            status.healthy = health.status_code == 200
            try:
                status.health = health.json()
            except ValueError:
                status.health = {"status": health.text[:200] or str(health.status_code)}
            models = client.get("/v1/models")
            if models.status_code == 200:
                status.models = models.json().get("data", [])
            first = client.get("/metrics")
            if first.status_code != 200:
                return status
            before = parse_metrics(first.text)
            after = before
            if interval > 0:
                time.sleep(interval)
                after = parse_metrics(client.get("/metrics").text)
    except httpx.HTTPError as exc:
        status.error = f"{exc.__class__.__name__}: {exc}"
        return status
    generated = (sum_of(after, "vllm:generation_tokens_total") or 0.0) - (
        sum_of(before, "vllm:generation_tokens_total") or 0.0
    )
    status.summary = {
        "ttft_p50_s": histogram_quantile(0.5, after, "vllm:time_to_first_token_seconds"),
        "ttft_p95_s": histogram_quantile(0.95, after, "vllm:time_to_first_token_seconds"),
        "e2e_p95_s": histogram_quantile(0.95, after, "vllm:e2e_request_latency_seconds"),
        "itl_p50_s": histogram_quantile(0.5, after, "vllm:inter_token_latency_seconds"),
        "tokens_per_s": generated / interval if interval > 0 else None,
        "running": sum_of(after, "vllm:num_requests_running"),
        "waiting": sum_of(after, "vllm:num_requests_waiting"),
        "kv_cache_usage": _max(after, "vllm:kv_cache_usage_perc"),
    }
    for labels, value in after.get("vllm:request_success_total", []):
        reason = labels.get("finished_reason", "?")
        status.finished[reason] = status.finished.get(reason, 0.0) + value
    return status
